"""charts/quantum-trader: lint, render and validate with a real helm, and check what the rendered objects say.

Every rendered object is validated by kubernetes-validate (strict: unknown fields are errors) for Kubernetes 1.30,
the oldest the default values support (ValidatingAdmissionPolicy v1), and the newest version it bundles. Objects of
custom kinds (ServiceMonitor, PodMonitor) have no schema there; their shape is asserted here instead, and the
examples/ custom resources are validated against the chart's CRDs with jsonschema.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from quantum_trader_operator import naming as n
from quantum_trader_operator.desired import MANAGED_REDIS_IMAGE, OperatorSettings, desired_objects
from tests.chart.chartlib import CHART, DIGEST, NAMESPACE, RELEASE, REPO, VARIANTS, Helm, HelmError, find, one

OLDEST = "1.30"
NEWEST = kubernetes_validate.latest_version()
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}
OPERATOR = f"{RELEASE}-quantum-trader-operator"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{OPERATOR}"


def _example_policy() -> dict[str, Any]:
    policy = yaml.safe_load((REPO / "examples" / "policy.yaml").read_text())
    policy["metadata"]["uid"] = "00000000-0000-4000-8000-000000000001"
    return policy


# ---------------------------------------------------------------- lint, render, validate


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict(helm: Helm, variant: str) -> None:
    out = helm.run("lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=VARIANTS[variant])
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_are_valid_kubernetes(helm: Helm, variant: str, version: str) -> None:
    docs = helm.template(VARIANTS[variant], kube_version=f"{version}.0" if version.count(".") == 1 else version)
    assert docs
    checked = 0
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{variant}: {where} is not valid for Kubernetes {version}: {path}: {error.message}")
        checked += 1
    assert checked >= 5 or variant == "everything-off"


def test_every_object_is_namespaced_where_it_should_be(rendered) -> None:
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for doc in rendered("default"):
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"], doc["kind"]
        else:
            assert doc["metadata"].get("namespace"), f"{doc['kind']}/{doc['metadata']['name']} has no namespace"


# ---------------------------------------------------------------- CRDs


def test_chart_crds_are_the_repository_crds(rendered) -> None:
    """crds-src/ is a byte-for-byte copy of crds/ (regenerate with `qt crds`, then
    `cp crds/*.yaml charts/quantum-trader/crds-src/`), and the rendered CRDs differ only by the keep annotation."""
    repo = {p.name: p.read_bytes() for p in sorted((REPO / "crds").glob("*.yaml"))}
    chart = {p.name: p.read_bytes() for p in sorted((CHART / "crds-src").glob("*.yaml"))}
    assert sorted(chart) == sorted(repo), "charts/quantum-trader/crds-src/ must hold exactly the files of crds/"
    for name, data in repo.items():
        assert chart[name] == data, (
            f"crds-src/{name} differs from crds/{name}: cp crds/*.yaml charts/quantum-trader/crds-src/"
        )

    rendered_crds = {d["metadata"]["name"]: d for d in find(rendered("default"), "CustomResourceDefinition")}
    expected = {d["metadata"]["name"]: d for d in (yaml.safe_load(t) for t in repo.values())}
    assert sorted(rendered_crds) == sorted(expected)
    for name, crd in rendered_crds.items():
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}, name
        assert crd == expected[name], f"{name}: the chart renders a CRD that differs from crds/"


def test_crds_can_be_left_out(rendered) -> None:
    assert not find(rendered("everything-off"), "CustomResourceDefinition")


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema as a JSON schema that, like `kubectl apply` (strict field validation), refuses unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node: dict[str, Any]) -> None:
        props = node.get("properties")
        if (
            props is not None
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for child in (props or {}).values():
            walk(child)
        if isinstance(node.get("items"), dict):
            walk(node["items"])
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])

    walk(schema)
    return schema


EXAMPLES = sorted(
    (path.name, index)
    for path in (REPO / "examples").glob("*.yaml")
    for index, doc in enumerate(yaml.safe_load_all(path.read_text()))
    if doc and str(doc.get("apiVersion", "")).startswith(n.GROUP + "/")
)


@pytest.mark.parametrize(("name", "index"), EXAMPLES)
def test_examples_validate_against_the_chart_crds(rendered, name: str, index: int) -> None:
    document = list(yaml.safe_load_all((REPO / "examples" / name).read_text()))[index]
    crds = {d["spec"]["names"]["kind"]: d for d in find(rendered("default"), "CustomResourceDefinition")}
    crd = crds[document["kind"]]
    version = document["apiVersion"].split("/")[1]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["served"]
    schema = _strict(served["schema"]["openAPIV3Schema"])
    errors = sorted(e.message for e in jsonschema.Draft4Validator(schema).iter_errors(document))
    assert errors == [], f"examples/{name}: {errors}"


def test_strict_schema_catches_a_typo(rendered) -> None:
    crds = {d["spec"]["names"]["kind"]: d for d in find(rendered("default"), "CustomResourceDefinition")}
    schema = _strict(crds["KillSwitch"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    document = yaml.safe_load((REPO / "examples" / "killswitch.yaml").read_text())
    document["spec"]["scopee"] = "all"
    assert list(jsonschema.Draft4Validator(schema).iter_errors(document))


def test_the_examples_are_covered() -> None:
    assert {name for name, _ in EXAMPLES} >= {"policy.yaml", "killswitch.yaml", "exitrollout.yaml"}


# ---------------------------------------------------------------- the operator Deployment


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_operator_deployment(rendered) -> None:
    docs = rendered("default")
    deployment = one(docs, "Deployment", OPERATOR)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # kopf peering is not leader election (DESIGN §5)
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"] == OPERATOR
    container = _container(deployment)
    assert container["image"] == "ghcr.io/quantum-trader/quantum-trader:0.1.0"
    assert container["args"] == ["operator", "-A", "--liveness=http://0.0.0.0:8080/healthz"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9200}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # restricted Pod Security Standard
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    # the Service in front of the liveness and metrics endpoints selects exactly this pod
    service = one(docs, "Service", OPERATOR)
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert spec["selector"]["matchLabels"] == service["spec"]["selector"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "health": (8080, "health"),
        "metrics": (9200, "metrics"),
    }


def test_operator_environment_is_what_the_operator_reads(rendered) -> None:
    """Every QT_OPERATOR_* variable the chart sets is one the operator's code reads, and the managed-Redis
    settings reach OperatorSettings.from_env as configured."""
    code = "\n".join(p.read_text() for p in (REPO / "operator" / "quantum_trader_operator").glob("*.py"))
    read = set(re.findall(r"\"(QT_OPERATOR_[A-Z_]+)\"", code))
    for variant in ("default", "settings", "managed-redis-custom"):
        env = _env(_container(one(rendered(variant), "Deployment")))
        assert {k for k in env if k.startswith("QT_OPERATOR_")} <= read, variant
    env = _env(_container(one(rendered("default"), "Deployment")))
    assert env["QT_OPERATOR_METRICS_PORT"] == "9200"
    assert OperatorSettings.from_env(env) == OperatorSettings(redis_image=MANAGED_REDIS_IMAGE, redis_storage="1Gi")
    custom = OperatorSettings.from_env(_env(_container(one(rendered("managed-redis-custom"), "Deployment"))))
    assert custom == OperatorSettings(
        redis_image="redis:7.4-alpine@sha256:" + "ab" * 32, redis_storage=None, redis_storage_class="fast-ssd"
    )
    settings = _env(_container(one(rendered("settings"), "Deployment")))
    assert settings["QT_OPERATOR_TIMER_SECONDS"] == "30"
    assert settings["QT_OPERATOR_KILLSWITCH_TIMER_SECONDS"] == "2"
    assert settings["QT_OPERATOR_DRAIN_SECONDS"] == "20.5"
    assert "QT_OPERATOR_DRIFT_SETTLE_SECONDS" not in settings
    assert settings["QT_OPERATOR_REDIS_URL_OVERRIDE"] == "redis://redis.example:6379/0"


def test_watched_namespaces(rendered) -> None:
    container = _container(one(rendered("namespaced"), "Deployment"))
    assert container["args"] == [
        "operator",
        "--namespace=trading",
        "--namespace=staging",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--verbose",
    ]


def test_image_digest_wins_over_tag(rendered, helm: Helm) -> None:
    for variant, image in (
        ("default", "ghcr.io/quantum-trader/quantum-trader:0.1.0"),
        ("tag", "quantum-trader:dev"),
        ("digest", f"localhost:5001/quantum-trader@{DIGEST}"),
    ):
        docs = rendered(variant)
        images = {
            c["image"]
            for d in docs
            if d["kind"] in ("Deployment", "Pod")
            for c in (d["spec"].get("template", {}).get("spec") or d["spec"])["containers"]
        }
        assert images == {image}, variant
    for bad in ({"image": {"tag": "latest"}}, {"image": {"digest": "sha256:abc"}}, {"image": {"digest": "latest"}}):
        with pytest.raises(HelmError, match="image"):
            helm.template(bad)


def test_values_schema_refuses_mistakes(helm: Helm) -> None:
    for bad in (
        {"operator": {"watchNamespace": ["a"]}},  # a typo
        {"operator": {"watchNamespaces": ["team-*"]}},  # RoleBindings need exact names
        {"managedRedis": {"storage": "lots"}},
        {"managedRedis": {"image": "redis:7.4-alpine"}},  # a tag alone: the managed Redis runs by digest
        {"managedRedis": {"image": "redis@sha256:" + "a" * 63}},
        {"admissionPolicy": {"validationActions": ["Block"]}},
        {"networkPolicy": {"exchange": {"cidrs": ["binance.com"]}}},
        {"operator": {"extraEnv": [{"name": "BINANCE_API_SECRET", "value": "s3cr3t"}]}},  # invariant 10
    ):
        with pytest.raises(HelmError):
            helm.template(bad)


# ---------------------------------------------------------------- RBAC


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


OPERATOR_RULES = {
    ("trading.quantumtrader.io", "tradingpolicies"): {"get", "list", "watch", "patch"},
    ("trading.quantumtrader.io", "exitrollouts"): {"list", "watch", "patch"},
    ("trading.quantumtrader.io", "killswitches"): {"list", "watch", "patch"},
    ("trading.quantumtrader.io", "tradingpolicies/status"): {"patch"},
    ("trading.quantumtrader.io", "exitrollouts/status"): {"patch"},
    ("trading.quantumtrader.io", "killswitches/status"): {"patch"},
    ("trading.quantumtrader.io", "tradingpolicies/finalizers"): {"update"},
    ("apps", "deployments"): {"list", "watch", "create", "patch", "delete"},
    ("apps", "statefulsets"): {"list", "create", "patch", "delete"},
    ("", "configmaps"): {"list", "create", "patch", "delete"},
    ("", "services"): {"list", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "secrets"): {"get", "create"},
    ("", "events"): {"create"},
}


def test_operator_rbac_is_exactly_what_it_uses(rendered) -> None:
    docs = rendered("default")
    assert _rules(one(docs, "ClusterRole", OPERATOR)) == OPERATOR_RULES
    assert _rules(one(docs, "ClusterRole", f"{OPERATOR}-cluster")) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},  # kopf's resource discovery
    }
    bindings = {b["roleRef"]["name"]: b for b in find(docs, "ClusterRoleBinding")}
    assert sorted(bindings) == [OPERATOR, f"{OPERATOR}-cluster"]
    for binding in bindings.values():
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]
    assert not find(docs, "Role") and not find(docs, "RoleBinding")


def test_rbac_covers_what_the_operator_writes() -> None:
    """Derived from the code: every kind desired.py renders is server-side applied (patch, and create for a new
    object); every kind handlers.py prunes is listed and deleted."""
    from quantum_trader_operator.handlers import PRUNED_KINDS  # imports kopf

    def plural(api_version: str, kind: str) -> tuple[str, str]:
        group = api_version.rpartition("/")[0]
        return group, {
            "ConfigMap": "configmaps",
            "Service": "services",
            "Deployment": "deployments",
            "StatefulSet": "statefulsets",
            "Secret": "secrets",
        }[kind]

    applied = {plural(o["apiVersion"], o["kind"]) for o in desired_objects(_example_policy())}
    assert ("apps", "statefulsets") in applied  # the example uses a managed Redis
    for resource in applied:
        assert {"create", "patch"} <= OPERATOR_RULES[resource], resource
    for api_version, kind in PRUNED_KINDS:
        assert {"list", "delete"} <= OPERATOR_RULES[plural(api_version, kind)], kind


def test_managed_redis_off_drops_statefulset_writes(rendered) -> None:
    rules = _rules(one(rendered("managed-redis-off"), "ClusterRole", OPERATOR))
    assert rules[("apps", "statefulsets")] == {"list"}


def test_namespaced_operator_gets_rolebindings(rendered) -> None:
    docs = rendered("namespaced")
    bindings = find(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["staging", "trading"]
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR}
    assert [b["roleRef"]["name"] for b in find(docs, "ClusterRoleBinding")] == [f"{OPERATOR}-cluster"]
    assert _rules(one(docs, "ClusterRole", f"{OPERATOR}-cluster"))[("", "namespaces")] == {"list", "watch"}


def test_aggregated_roles_for_people(rendered) -> None:
    docs = rendered("default")
    view = one(docs, "ClusterRole", f"{RELEASE}-quantum-trader-view")
    edit = one(docs, "ClusterRole", f"{RELEASE}-quantum-trader-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    kinds = ("tradingpolicies", "exitrollouts", "killswitches")
    assert _rules(view) == {("trading.quantumtrader.io", k): {"get", "list", "watch"} for k in kinds}
    writes = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
    assert _rules(edit) == {("trading.quantumtrader.io", k): writes for k in kinds}  # no /status for people


# ---------------------------------------------------------------- admission policy


def _cel(expression: str, activation: dict[str, Any]) -> Any:
    celpy = pytest.importorskip("celpy", reason="evaluating CEL needs cel-python (test extras)")
    env = celpy.Environment()
    return env.program(env.compile(expression)).evaluate(activation)


def _evaluate(policy: dict[str, Any], request: dict[str, Any], obj: Any = None, old: Any = None) -> tuple[bool, str]:
    """Evaluate a ValidatingAdmissionPolicy's variables and validations the way the API server does."""
    import celpy
    from celpy import celtypes

    activation: dict[str, Any] = {
        "request": celpy.json_to_cel(request),
        "object": celpy.json_to_cel(obj),
        "oldObject": celpy.json_to_cel(old),
    }
    variables: dict[Any, Any] = {}
    for variable in policy["spec"].get("variables", []):
        activation["variables"] = celtypes.MapType(variables)
        variables[celtypes.StringType(variable["name"])] = _cel(variable["expression"], activation)
    activation["variables"] = celtypes.MapType(variables)
    for validation in policy["spec"]["validations"]:
        if not _cel(validation["expression"], activation):
            message = validation.get("message") or _cel(validation["messageExpression"], activation)
            return False, str(message)
    return True, ""


def _deployment_request(user: str, operation: str) -> dict[str, Any]:
    return {
        "userInfo": {"username": user},
        "operation": operation,
        "namespace": "default",
        "name": "paper-demo-governor",
    }


def test_admission_policy_protects_the_operators_deployments(rendered) -> None:
    docs = rendered("default")
    policy = one(docs, "ValidatingAdmissionPolicy", f"{RELEASE}-quantum-trader-protect-deployments")
    binding = one(docs, "ValidatingAdmissionPolicyBinding", f"{RELEASE}-quantum-trader-protect-deployments")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    match = policy["spec"]["matchConstraints"]
    # the main resource only: deployments/status (the deployment controller) is a subresource and not matched
    assert match["resourceRules"] == [
        {
            "apiGroups": ["apps"],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE", "DELETE"],
            "resources": ["deployments"],
        }
    ]
    assert match["objectSelector"] == {"matchLabels": {n.LABEL_MANAGED_BY: n.MANAGED_BY}}
    assert policy["spec"]["failurePolicy"] == "Fail"

    # the label the policy selects is the one desired.py puts on every Deployment it renders
    for obj in desired_objects(_example_policy()):
        if obj["kind"] == "Deployment":
            assert obj["metadata"]["labels"][n.LABEL_MANAGED_BY] == n.MANAGED_BY

    # the operator's ServiceAccount, as the API server names it, is the one the chart runs the operator as
    deployment = one(docs, "Deployment", OPERATOR)
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert f"system:serviceaccount:{deployment['metadata']['namespace']}:{sa}" == OPERATOR_USER

    allowed = {
        OPERATOR_USER,
        "system:serviceaccount:kube-system:generic-garbage-collector",
        "system:serviceaccount:kube-system:namespace-controller",
        "system:kube-controller-manager",
    }
    for operation in ("CREATE", "UPDATE", "DELETE"):
        for user in allowed:
            assert _evaluate(policy, _deployment_request(user, operation)) == (True, ""), (user, operation)
        for user in ("kubernetes-admin", "system:serviceaccount:default:default", f"{OPERATOR_USER}x"):
            ok, message = _evaluate(policy, _deployment_request(user, operation))
            assert not ok, (user, operation)
            assert f"{user} may not {operation}" in message and "TradingPolicy" in message


def test_admission_policy_follows_watched_namespaces_and_service_account(rendered) -> None:
    docs = rendered("namespaced")
    policy = one(docs, "ValidatingAdmissionPolicy")
    assert policy["spec"]["matchConstraints"]["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["trading", "staging"]}]
    }
    warn = one(rendered("admission-warn"), "ValidatingAdmissionPolicyBinding")
    assert warn["spec"]["validationActions"] == ["Warn", "Audit"]
    renamed = one(rendered("settings"), "ValidatingAdmissionPolicy")
    assert _evaluate(renamed, _deployment_request("system:serviceaccount:quantum-trader:trader-operator", "UPDATE"))[0]
    assert not _evaluate(renamed, _deployment_request(OPERATOR_USER, "UPDATE"))[0]


def test_admission_policy_off_and_old_clusters(helm: Helm, rendered) -> None:
    docs = rendered("admission-off")
    assert not find(docs, "ValidatingAdmissionPolicy") and not find(docs, "ValidatingAdmissionPolicyBinding")
    with pytest.raises(HelmError, match=r"needs Kubernetes >= 1.30.*admissionPolicy.enabled=false"):
        helm.template({}, kube_version="1.29.0")
    assert helm.template(VARIANTS["admission-off"], kube_version="1.29.0")


def test_managed_redis_off_refuses_new_managed_policies(rendered) -> None:
    docs = rendered("managed-redis-off")
    policy = one(docs, "ValidatingAdmissionPolicy", f"{RELEASE}-quantum-trader-no-managed-redis")
    one(docs, "ValidatingAdmissionPolicyBinding", f"{RELEASE}-quantum-trader-no-managed-redis")
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["tradingpolicies"]
    managed = _example_policy()
    external = copy.deepcopy(managed)
    external["spec"]["redis"] = {"url": "redis://redis.trading.svc:6379/0"}
    bare = copy.deepcopy(managed)
    del bare["spec"]["redis"]

    def request(operation: str) -> dict[str, Any]:
        return {"userInfo": {"username": "alice"}, "operation": operation}

    ok, message = _evaluate(policy, request("CREATE"), managed)
    assert not ok and "spec.redis.url" in message
    assert _evaluate(policy, request("CREATE"), external)[0]
    assert _evaluate(policy, request("CREATE"), bare)[0]
    assert _evaluate(policy, request("UPDATE"), managed, managed)[0]  # an existing one keeps its Redis
    assert not _evaluate(policy, request("UPDATE"), managed, external)[0]  # switching to managed is refused
    assert not find(rendered("default"), "ValidatingAdmissionPolicy", f"{RELEASE}-quantum-trader-no-managed-redis")


# ---------------------------------------------------------------- network policies


def _component_pod_labels() -> tuple[dict[str, str], dict[str, str]]:
    objects = desired_objects(_example_policy())
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-governor"))
    redis = next(o for o in objects if o["kind"] == "StatefulSet")
    return deployment["spec"]["template"]["metadata"]["labels"], redis["spec"]["template"]["metadata"]["labels"]


def test_network_policy_for_trading_pods(rendered) -> None:
    docs = rendered("default")
    trading = one(docs, "NetworkPolicy", f"{RELEASE}-quantum-trader-trading")
    assert trading["metadata"]["namespace"] == "default"  # where examples/policy.yaml lives
    spec = trading["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    component, redis = _component_pod_labels()
    selector = spec["podSelector"]["matchLabels"]
    assert selector.items() <= component.items() and selector.items() <= redis.items()
    egress_ports = {(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]}
    assert {("UDP", 53), ("TCP", 53), ("TCP", n.REDIS_PORT), ("TCP", n.EXCHANGE_SIM_PORT)} == egress_ports
    assert not any("ipBlock" in peer for rule in spec["egress"] for peer in rule["to"])  # nothing leaves by default
    ingress_ports = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert ingress_ports == {n.REDIS_PORT, n.EXCHANGE_SIM_PORT}
    # the operator reaches the instance's Redis
    operator_labels = one(docs, "Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"]
    from_operator = [
        peer
        for rule in spec["ingress"]
        for peer in rule["from"]
        if "namespaceSelector" in peer and peer["podSelector"]["matchLabels"].items() <= operator_labels.items()
    ]
    assert from_operator and from_operator[0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": NAMESPACE
    }


def test_network_policy_egress_is_configurable(rendered) -> None:
    docs = rendered("egress")
    trading = one(docs, "NetworkPolicy", f"{RELEASE}-quantum-trader-trading")
    blocks = {
        (peer["ipBlock"]["cidr"], p["port"])
        for rule in trading["spec"]["egress"]
        for peer in rule["to"]
        if "ipBlock" in peer
        for p in rule["ports"]
    }
    assert blocks == {("0.0.0.0/0", 443), ("0.0.0.0/0", 9443), ("10.20.0.0/16", 6379), ("10.20.0.0/16", 6380)}
    operator = one(docs, "NetworkPolicy", OPERATOR)
    api = [rule for rule in operator["spec"]["egress"] if any("ipBlock" in p for p in rule["to"])]
    assert {(peer["ipBlock"]["cidr"], p["port"]) for rule in api for peer in rule["to"] for p in rule["ports"]} == {
        ("172.18.0.0/16", 6443),
        ("10.20.0.0/16", 6379),
        ("10.20.0.0/16", 6380),
    }
    namespaced = rendered("namespaced")
    assert sorted(p["metadata"]["namespace"] for p in find(namespaced, "NetworkPolicy")) == [
        NAMESPACE,
        "staging",
        "trading",
    ]


def test_operator_network_policy(rendered) -> None:
    docs = rendered("default")
    policy = one(docs, "NetworkPolicy", OPERATOR)
    labels = one(docs, "Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {8080, 9200}
    _, redis = _component_pod_labels()
    to_redis = [
        peer
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        if "podSelector" in peer and peer["podSelector"]["matchLabels"].get(n.LABEL_ROLE) == n.ROLE_REDIS
    ]
    assert to_redis and to_redis[0]["podSelector"]["matchLabels"].items() <= redis.items()
    assert not find(rendered("everything-off"), "NetworkPolicy")


# ---------------------------------------------------------------- monitoring, dashboard, notes, helm test


def test_monitors_are_off_by_default(rendered) -> None:
    docs = rendered("default")
    assert not [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]


def test_service_and_pod_monitors(rendered) -> None:
    docs = rendered("monitoring-on")
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", OPERATOR)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["honorLabels"] is True

    pod_monitor = one(docs, "PodMonitor")
    component, redis = _component_pod_labels()
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= component.items()
    assert not selector.items() <= redis.items()  # Redis has no /metrics
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["default", "trading"]}
    governor = next(
        o
        for o in desired_objects(_example_policy())
        if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-governor")
    )
    ports = {p["name"]: p["containerPort"] for p in governor["spec"]["template"]["spec"]["containers"][0]["ports"]}
    (pod_endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert ports[pod_endpoint["port"]] == n.METRICS_PORT
    # metrics scrapes are let through the network policies
    for policy in find(docs, "NetworkPolicy"):
        assert any(
            rule["from"] == VARIANTS["monitoring-on"]["networkPolicy"]["metricsFrom"]
            for rule in policy["spec"]["ingress"]
        )


def test_dashboard_configmap(rendered) -> None:
    config_map = one(rendered("default"), "ConfigMap", f"{RELEASE}-quantum-trader-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "quantum-trader.json").read_text())
    assert json.loads(config_map["data"]["quantum-trader.json"]) == shipped
    assert not find(rendered("everything-off"), "ConfigMap")


def test_helm_test_hook_checks_the_operator(rendered) -> None:
    docs = rendered("digest")
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == f"localhost:5001/quantum-trader@{DIGEST}"
    script = container["args"][0]
    assert f"http://{OPERATOR}.{NAMESPACE}.svc" in script and ":8080/healthz" in script and ":9200/metrics" in script
    compile(script.replace("{{", "{").replace("}}", "}"), "helm-test", "exec")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def _notes(helm: Helm, tmp_path: Path, values: dict[str, Any] | None = None) -> str:
    """NOTES.txt rendered by helm. `helm template` leaves NOTES out and `helm install --dry-run` needs a cluster,
    so a copy of the chart wraps NOTES.txt in a named template and renders it into a ConfigMap."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = chart / "templates" / "NOTES.txt"
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes.read_text() + "{{- end -}}\n"
    )
    notes.unlink()
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "test.notes" . | quote }}\n'
    )
    out = helm.run(
        "template", RELEASE, str(chart), "--namespace", NAMESPACE, "--show-only", "templates/notes.yaml", values=values
    )
    return yaml.safe_load(out)["data"]["notes"]


def test_notes_tell_the_next_commands(helm: Helm, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path)
    assert "kubectl apply -f examples/policy.yaml" in notes
    assert "kubectl get tradingpolicies -w" in notes
    assert "kubectl apply -f examples/killswitch.yaml" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    assert f"rollout status deployment/{OPERATOR}" in notes
    assert OPERATOR_USER in notes  # who may change the protected Deployments
    off = _notes(helm, tmp_path / "off", VARIANTS["everything-off"])
    assert "managed-by=quantum-trader-operator" not in off


def test_chart_files_are_tracked_inputs() -> None:
    """The chart reads only files that are in it (helm package ships the chart folder alone)."""
    for template in (CHART / "templates").rglob("*"):
        if template.is_file():
            for name in re.findall(r'Files\.(?:Get|Glob) "([^"]+)"', template.read_text()):
                assert list(CHART.glob(name)), f"{template.name} reads {name}, which is not in the chart"
    assert Path(CHART / "values.schema.json").is_file()


def test_packaged_chart_renders_the_same(helm: Helm, tmp_path: Path) -> None:
    """`helm package` keeps everything the templates read (crds-src/, dashboards/): the archive renders the same."""
    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("quantum-trader-*.tgz")
    args = ["template", RELEASE, str(archive), "--namespace", NAMESPACE]
    assert helm.run(*args) == helm.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE)
