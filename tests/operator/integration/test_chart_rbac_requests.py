"""Everything the running operator asks the API server is granted by the chart's RBAC, counted at the emulator.

The chart's ClusterRoles (rendered by a real helm, tests/chart/chartlib.py) say what the operator may do; the
emulator records every request. One operator (``qt operator -A``, kopf included) goes through a policy's life:
creation, foreign fields of another manager removed, a deleted child recreated, a kill switch and an exit rollout
engaged and deleted, a component disabled (its Deployment deleted), the policy deleted. Every one of its requests
must be a verb the chart grants on that resource: a request outside it is a 403 on a cluster installed by the
chart. The test's own requests carry a user agent of their own and are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
from kubernetes import client as k8s_client

from harness.kube_emulator import EmulatedCluster
from quantum_trader.contracts.policy import parse_policy
from quantum_trader_operator import naming as n
from quantum_trader_operator.runtime_io import Kube
from tests.chart.chartlib import RELEASE, Helm, find
from tests.operator.integration.support import (
    Cluster,
    Operator,
    example,
    keys_for,
    paper_policy,
    wait_for,
    wait_handled,
)

PERSON = "qt-test-person"
"""the user agent of the test's own requests (a person with kubectl, as far as the operator knows)"""
OPERATOR_ROLES = {f"{RELEASE}-quantum-trader-operator", f"{RELEASE}-quantum-trader-operator-cluster"}


def granted(documents: Iterable[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource[/subresource]) -> verbs, over the operator's ClusterRoles."""
    rules: dict[tuple[str, str], set[str]] = {}
    roles = [r for r in find(list(documents), "ClusterRole") if r["metadata"]["name"] in OPERATOR_ROLES]
    assert {r["metadata"]["name"] for r in roles} == OPERATOR_ROLES
    for role in roles:
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def verb(request: Any) -> str:
    """The RBAC verb of one recorded request."""
    method = request.method.value
    if method == "GET":
        if dict(request.params).get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PATCH": "patch", "PUT": "update"}[method]


def operator_requests(cluster: EmulatedCluster) -> list[tuple[str, str, str, str]]:
    """(verb, apiGroup, resource[/subresource], path) of every resource request not sent by the test."""
    assert cluster.emulator is not None

    def collect(emulator: Any) -> list[tuple[str, str, str, str]]:
        found = []
        for request in emulator._requests:
            if request.headers.get("User-Agent") == PERSON:
                continue
            if request.resource is None or not request.resource.plural:
                continue  # discovery (/api, /apis/<group>/<version>): every authenticated user may
            resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
            found.append((verb(request), request.resource.group, resource, str(request.url.path)))
        return found

    return cluster.emulator.call(collect)


def as_person(cluster: EmulatedCluster) -> Cluster:
    """The same namespace of the emulator through a client of its own user agent."""
    assert cluster.emulator is not None
    configuration = k8s_client.Configuration()
    configuration.host = cluster.emulator.url
    api = k8s_client.ApiClient(configuration)
    api.user_agent = PERSON
    return Cluster(Kube(api, timeout=10), cluster.namespace)


def deployment(person: Cluster, name: str, component: str) -> dict[str, Any] | None:
    return person.get("Deployment", n.deployment_name(name, component), "apps/v1")


def test_everything_the_operator_asks_is_granted_by_the_charts_rbac(
    cluster: EmulatedCluster, operator: Operator, r_client: redis.Redis, helm: Helm
) -> None:
    rules = granted(helm.template())
    person = as_person(cluster)
    manifest = paper_policy()
    name = manifest["metadata"]["name"]
    components = parse_policy(manifest["spec"]).enabled_components()
    keys = keys_for(cluster.namespace, name)
    person.create(manifest)
    wait_for(lambda: len(person.list("Deployment", "apps/v1")) == len(components), what="a Deployment per component")
    wait_handled(person, "TradingPolicy", name)

    # Another manager's env var, label and volume: removed by the repair (the step that needs its own writes).
    governor = n.deployment_name(name, "governor")
    container = "/spec/template/spec/containers/0"
    person.json_patch(
        "apps/v1",
        "Deployment",
        governor,
        [
            {"op": "add", "path": f"{container}/env/-", "value": {"name": "EXTRA", "value": "1"}},
            {"op": "add", "path": "/metadata/labels/team", "value": "night-shift"},
            {"op": "add", "path": "/spec/template/spec/volumes/-", "value": {"name": "extra", "emptyDir": {}}},
        ],
        field_manager="kubectl-set",
    )

    def repaired() -> bool:
        found = deployment(person, name, "governor")
        return (
            bool(found)
            and "team" not in found["metadata"]["labels"]
            and not any(
                e["name"] == "EXTRA" for e in found["spec"]["template"]["spec"]["containers"][0].get("env") or []
            )
        )

    wait_for(repaired, what="the foreign env var, label and volume to be removed")
    wait_for(lambda: n.DRIFT_HALT not in r_client.hgetall(keys.halts), timeout=15, what="the drift halt to clear")

    person.delete("Deployment", n.deployment_name(name, "harvest"), "apps/v1")
    wait_for(lambda: deployment(person, name, "harvest"), what="the deleted child to be created again")

    switch, rollout = example("killswitch.yaml"), example("exitrollout.yaml")
    person.create(switch)
    person.create(rollout)
    wait_for(lambda: person.status("KillSwitch", switch["metadata"]["name"]).get("generation"), what="KillSwitch")
    wait_for(lambda: person.status("ExitRollout", rollout["metadata"]["name"]).get("live"), what="ExitRollout")
    for kind, name_ in (("KillSwitch", switch["metadata"]["name"]), ("ExitRollout", rollout["metadata"]["name"])):
        person.delete(kind, name_)
        wait_for(lambda kind=kind, name_=name_: person.get(kind, name_) is None, what=f"the {kind} to be gone")

    disabled = {"harvest": {"enabled": False}, "heat-gate": {"enabled": False}}  # heat-gate consumes harvest's
    person.merge_patch(n.API_VERSION, "TradingPolicy", name, {"spec": {"components": disabled}})
    wait_for(lambda: deployment(person, name, "harvest") is None, what="the disabled component's Deployment deleted")
    person.delete("TradingPolicy", name)
    wait_for(lambda: person.get("TradingPolicy", name) is None, what="the policy to be gone (finalizer removed)")

    requests = operator_requests(cluster)
    made = {(v, group, resource) for v, group, resource, _ in requests}
    # Not vacuous: the operator's own reads and writes are among them, the repair's included.
    assert {("patch", "apps", "deployments"), ("delete", "apps", "deployments"), ("get", "", "secrets")} <= made
    refused = sorted({f"{v} {group or 'core'}/{resource} ({path})" for v, group, resource, path in requests
                      if v not in rules.get((group, resource), set())})  # fmt: skip
    assert refused == [], "the chart's RBAC does not grant what the operator asked: " + "; ".join(refused)
