{{/* Names, labels and references shared by every template. */}}

{{- define "qt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-quantum-trader, or the release name when it already contains the chart name. */}}
{{- define "qt.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "qt.operatorName" -}}
{{- printf "%s-operator" (include "qt.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qt.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object the chart renders. managed-by is Helm: the admission policy protects only
     what the operator manages (app.kubernetes.io/managed-by=quantum-trader-operator). */}}
{{- define "qt.labels" -}}
helm.sh/chart: {{ include "qt.chart" . }}
app.kubernetes.io/name: {{ include "qt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: quantum-trader
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "qt.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "qt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "qt.operatorLabels" -}}
{{ include "qt.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "qt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qt.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The user name the API server gives the operator's requests (what the admission policy allows). */}}
{{- define "qt.operatorUsername" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "qt.serviceAccountName" .) -}}
{{- end -}}

{{/* repository@digest when a digest is set (it wins), else repository:tag (default: appVersion). */}}
{{- define "qt.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces that get the trading pods' NetworkPolicy (a list, as JSON). */}}
{{- define "qt.tradingNamespaces" -}}
{{- $namespaces := .Values.networkPolicy.namespaces -}}
{{- if not $namespaces -}}{{- $namespaces = .Values.operator.watchNamespaces -}}{{- end -}}
{{- if not $namespaces -}}{{- $namespaces = list .Release.Namespace -}}{{- end -}}
{{- uniq $namespaces | toJson -}}
{{- end -}}

{{/* The labels the operator puts on everything it creates (operator/quantum_trader_operator/naming.py). */}}
{{- define "qt.managedByOperator" -}}
app.kubernetes.io/managed-by: quantum-trader-operator
{{- end -}}
