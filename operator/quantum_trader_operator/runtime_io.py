"""The operator's Kubernetes I/O: server-side apply, reads, JSON patches, status patches (``redis_io.py`` is the
instance's Redis). Nothing here decides anything: gather.py reads through it, act.py writes through it, and
the decisions are pure (decide.py and the modules it calls). Synchronous on purpose: kopf runs sync handlers
in its thread pool, and the kubernetes client is synchronous.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from quantum_trader_operator import kube_view as kv
from quantum_trader_operator import naming as n

__all__ = ["Kube", "KubeError", "load_kube_config", "object_path"]

_PLURALS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Pod": "pods",
    "Event": "events",
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "TradingPolicy": "tradingpolicies",
    "ExitRollout": "exitrollouts",
    "KillSwitch": "killswitches",
}


class KubeError(Exception):
    """A Kubernetes API request that did not succeed: the HTTP status and the server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def load_kube_config() -> None:
    """In a pod: the service account. Elsewhere: the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{_PLURALS[kind]}"


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(api_version, kind, namespace)}/{name}"


class Kube:
    """Raw JSON requests through the kubernetes client's ApiClient (auth, TLS and proxies from its config).

    Raw dicts rather than the client's models: the pure modules read objects as the API server returns them,
    and a model round-trip would drop fields it does not know (and every custom resource field).
    """

    def __init__(self, api_client: k8s_client.ApiClient | None = None, timeout: float = 30.0) -> None:
        self.api = api_client or k8s_client.ApiClient()
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        verb, url, header_params, payload, _ = serialized
        try:
            response = self.api.call_api(
                verb, url, header_params=header_params, body=payload, _request_timeout=self.timeout
            )
            response.read()
        except ApiException as error:
            raise KubeError(error.status or 0, _status_message(error.body) or str(error.reason)) from None
        data = response.data or b""
        if not 200 <= response.status < 300:
            raise KubeError(response.status, _status_message(data) or response.reason or "")
        return json.loads(data) if data else None

    # --------------------------------------------------------------- objects

    def apply(self, manifest: Mapping[str, Any], field_manager: str = n.MANAGED_BY) -> dict[str, Any]:
        """Server-side apply, forced: the operator owns every field it writes (DESIGN §5), so a person's edit
        of one of them is taken back instead of being a conflict."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        return self.request(
            "PATCH",
            path,
            query=[("fieldManager", field_manager), ("force", "true")],
            body=dict(manifest),
            content_type="application/apply-patch+yaml",
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", object_path(api_version, kind, namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str] | None = None) -> list[dict]:
        """Objects of a kind in a namespace. The label selector is sent, and applied here again: a server that
        ignores it (the test emulator) must not make another policy's objects ours."""
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items()))] if labels else []
        items = (self.request("GET", collection_path(api_version, kind, namespace), query=query) or {}).get("items")
        result = []
        for item in items or []:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
            if labels and not kv.has_labels(item, labels):
                continue
            result.append(item)
        return result

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self.request(
            "POST", collection_path(manifest["apiVersion"], manifest["kind"], meta["namespace"]), body=dict(manifest)
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            # Background: the API server's garbage collector removes the ReplicaSets and pods.
            self.request(
                "DELETE",
                object_path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except KubeError as error:
            if error.status != 404:
                raise

    def json_patch(self, api_version: str, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        """A JSON patch (RFC 6902) under the operator's field manager; a failed ``test`` is a 422."""
        self.request(
            "PATCH",
            object_path(api_version, kind, namespace, name),
            query=[("fieldManager", n.MANAGED_BY)],
            body=ops,
            content_type="application/json-patch+json",
        )

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """A merge patch of ``status`` through the status subresource (for paths outside a kopf handler's patch)."""
        self.request(
            "PATCH",
            object_path(api_version, kind, namespace, name) + "/status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        raw = (secret.get("data") or {}).get(key)
        if raw is not None:
            return base64.b64decode(raw).decode()
        return (secret.get("stringData") or {}).get(key)


def _status_message(raw: Any) -> str:
    if not raw:
        return ""
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return str(raw)[:300]
    return str(data.get("message") or data.get("reason") or "")[:300] if isinstance(data, dict) else str(data)[:300]
