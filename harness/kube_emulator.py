"""A Kubernetes API server for the operator's integration tests: kmock's emulator, taught what kopf and the
operator need, served over real HTTP on a loopback port from a background thread.

``kmock.KubernetesEmulator`` stores objects and streams watch events, but it is deliberately simple. What
:class:`QtEmulator` adds, and why:

- **identity**: every created object gets ``uid``, ``resourceVersion``, ``creationTimestamp`` and
  ``generation``; ``generateName`` is honoured (kopf posts Events with it — without it the second Event is a
  409). The operator renders ownerReferences from the policy's ``uid``, so a missing uid is a failure.
- **server-side apply with field ownership** (``field_ownership.py``): ``PATCH`` with
  ``application/apply-patch+yaml`` creates the object when it is absent (kmock would answer 404) and otherwise
  merges it structurally (keyed lists by key); ``metadata.managedFields`` records every manager's fields —
  ``Apply`` for server-side apply, ``Update`` for creates and other patches (``?fieldManager=``, else the
  User-Agent's product name, as the API server does). An apply changing another manager's field is a 409
  unless forced; fields a manager stops applying are removed unless someone else owns them; fields another
  manager added stay — the behaviour that made a forced re-apply unable to undo ``kubectl set env``.
- **generation / resourceVersion**: bumped on a change outside ``metadata``/``status``; a patch that changes
  nothing produces no watch event (as on a real API server, where it would otherwise make a hot loop).
- **status subresource**: ``PATCH .../status`` changes only ``status``; a main-resource patch does not change
  ``status`` of a resource declaring the subresource.
- **a minimal Deployment controller**: a Deployment whose spec changes gets ``status`` as if all its
  replicas rolled out (observedGeneration, replicas, ready/available/updated). No pods are created: tests
  write pods and heartbeats themselves when they need them.
- **label selectors are ignored** by kmock (lists return everything): the operator filters by labels in code.
- **no garbage collection**: deleting a policy leaves its children (tests use a fresh emulator each).
- **CRD defaults checked as the API server checks them** (``harness/crd_defaults.py``): a CRD created or
  applied with a default that breaks its node's schema or CEL rules (checked without nested defaulting) is a 422
  with the API server's messages — and the emulator refuses to start on such a CRD in ``crds/``, the defect that
  made ``kubectl apply -f crds/`` fail on a real cluster while every emulator test passed.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import secrets
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import apps, enums, k8s

from harness import field_ownership
from harness.crd_defaults import default_violations
from harness.operator_process import Cluster
from quantum_trader_operator.models import RESOURCES
from quantum_trader_operator.naming import GROUP, VERSION

REPO = Path(__file__).resolve().parents[1]
_T = TypeVar("_T")
_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class QtEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with identities, SSA-as-merge-create, generations, status subresources and rollouts."""

    _versions = itertools.count(1000)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Built-in resources (v1 namespaces, apps/v1, apiextensions CRDs...) as a k3s server lists them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # kmock 0.8 reads its bundle with read_binary
            self.resources.load_bundled()
        for crd in RESOURCES:
            self.resources[f"{GROUP}/{VERSION}/{crd.plural}"] = kmock.ResourceInfo(
                kind=crd.kind,
                singular=crd.singular,
                namespaced=True,
                verbs=set(_VERBS),
                shortnames=set(crd.short_names),
                categories=set(crd.categories),
                subresources={"status"},
            )
            text = (REPO / "crds" / crd.filename).read_text()
            definition = yaml.safe_load(text)
            refuse_invalid_crd(definition)
            self._store_new(kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions"), None, definition)
        self._store_new(kmock.resource("", "v1", "namespaces"), None, {"metadata": {"name": "default"}})

    # ------------------------------------------------------------------ object bookkeeping

    def _stamp(self, meta: dict[str, Any], *, created: bool) -> None:
        meta["resourceVersion"] = str(next(self._versions))
        if created:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["generation"] = 1

    def _store_new(self, resource: kmock.resource, namespace: str | None, data: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(data)
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if namespace is not None:
            meta["namespace"] = namespace
        self._stamp(meta, created=True)
        _simulate_controllers(resource, data)
        key = (resource, namespace, meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise k8s.KubernetesObjectConflictError()
        if key in self._objects:
            self._objects[key].create(data)
        else:
            self._objects[key] = data
        return data

    def _has_status_subresource(self, resource: kmock.resource) -> bool:
        # ResourcesArray creates an entry on a missing key (which would then show in discovery): look first.
        return resource in list(self.resources) and "status" in self.resources[resource].subresources

    async def _handle(self, request: kmock.Request) -> Any:
        if _is_crd_write(request):
            refuse_invalid_crd(request.data)
        if request.action == enums.action.DELETE and request.resource is not None and request.name is not None:
            await self._mark_for_deletion((request.resource, request.namespace, request.name))
        if request.resource is None or request.action not in (enums.action.CREATE, enums.action.UPDATE):
            return await super()._handle(request)  # reads, watches and deletes: kmock as it is
        delete_key = None
        async with self._lock:
            resource = request.resource
            data = request.data if isinstance(request.data, Mapping | list) else {}
            if request.action == enums.action.CREATE:
                namespace = request.namespace or (data.get("metadata") or {}).get("namespace")
                created = dict(data)
                field_ownership.record_update({}, created, _field_manager(request))
                stored = self._store_new(resource, namespace, created)
                # kmock's create responder finds the object by the name in the request body.
                data.setdefault("metadata", {})["name"] = stored["metadata"]["name"]
                await self._buses[resource].put({"type": "ADDED", "object": stored})
            else:
                key = (resource, request.namespace, request.name)
                exists = key in self._objects and not self._objects[key].deleted
                apply = "apply-patch" in request.headers.get("Content-Type", "")
                if not exists and apply:
                    body = copy.deepcopy(dict(data))
                    body.setdefault("metadata", {})["name"] = request.name
                    body = self._server_side_apply(request, {"metadata": dict(body["metadata"])}, body)
                    stored = self._store_new(resource, request.namespace, body)
                    await self._buses[resource].put({"type": "ADDED", "object": stored})
                elif not exists:
                    raise k8s.KubernetesObjectNotFoundError()
                else:
                    delete_key = await self._patch(key, request, data)
        try:
            # Skip KubernetesEmulator._handle (the storing is done above); its responders return the object.
            return await apps.RawHandler._handle(self, request)
        finally:
            if delete_key is not None:
                async with self._lock:
                    raw = self._objects[delete_key].raw
                    self._objects[delete_key].delete()
                    await self._buses[delete_key[0]].put({"type": "DELETED", "object": raw})

    async def _mark_for_deletion(self, key: tuple[Any, Any, Any]) -> None:
        """A DELETE of an object with finalizers sets ``deletionTimestamp`` in a new version, as the API server
        does. kmock sets it without a new resourceVersion, and kopf skips an event whose resourceVersion it has
        already seen from its own last patch (a status write a moment before): the deletion then went unnoticed
        and the object kept its finalizer for good. kmock's own DELETE handling then finds it marked."""
        async with self._lock:
            if key not in self._objects:  # kmock's ObjectsArray has no .get()
                return
            obj = self._objects[key]
            if obj.deleted:
                return
            meta = obj.raw.get("metadata") or {}
            if meta.get("deletionTimestamp") or not meta.get("finalizers"):
                return
            new = copy.deepcopy(obj.raw)
            new["metadata"]["deletionTimestamp"] = _now()
            self._stamp(new["metadata"], created=False)
            obj.history.append(new)
            await self._buses[key[0]].put({"type": "MODIFIED", "object": copy.deepcopy(new)})

    async def _patch(self, key: tuple[Any, Any, Any], request: kmock.Request, data: Any) -> Any:
        resource = key[0]
        obj = self._objects[key]
        if isinstance(data, Mapping):
            data = dict(data)
            if request.subresource == "status":
                data = {"status": data.get("status")}
            elif self._has_status_subresource(resource):
                data.pop("status", None)
        old = copy.deepcopy(obj.raw)
        ssa = _is_server_side_apply(request)
        try:
            if ssa:
                obj.history.append(self._server_side_apply(request, old, data))
            else:
                obj.patch(data)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
            # A failed `test` op (kopf's optimistic concurrency on resourceVersion) is a 422, as on a real server;
            # kmock would answer 500, which kopf retries as a server error with the same stale version.
            raise k8s.KubernetesError(status=422, reason="Invalid", message=str(error)) from None
        new = copy.deepcopy(obj.raw)
        if not ssa:
            field_ownership.record_update(old, new, _field_manager(request), subresource=request.subresource or "")
        if new == old:
            obj.history.pop()  # nothing changed: no new version, no event
            return None
        meta = new.setdefault("metadata", {})
        self._stamp(meta, created=False)
        changed_body = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }
        if changed_body:
            meta["generation"] = int(meta.get("generation") or 1) + 1
            _simulate_controllers(resource, new)
        obj.history.pop()
        obj.history.append(new)
        await self._buses[resource].put({"type": "MODIFIED", "object": copy.deepcopy(new)})
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return key
        return None

    def _server_side_apply(self, request: kmock.Request, live: Mapping[str, Any], config: Any) -> dict[str, Any]:
        force = request.params.get("force") == "true"
        try:
            return field_ownership.apply(live, dict(config), _field_manager(request), force=force)
        except field_ownership.Conflict as error:
            raise k8s.KubernetesError(status=409, reason="Conflict", message=str(error)) from None


def _is_server_side_apply(request: kmock.Request) -> bool:
    return "apply-patch" in request.headers.get("Content-Type", "") and not request.subresource


def _field_manager(request: kmock.Request) -> str:
    """``?fieldManager=``, else what the API server derives from the User-Agent (its product name)."""
    explicit = request.params.get("fieldManager")
    if explicit:
        return explicit
    agent = request.headers.get("User-Agent", "")
    return agent.split("/", 1)[0].strip() or "unknown"


def _is_crd_write(request: kmock.Request) -> bool:
    resource = request.resource
    return (
        resource is not None
        and (resource.group, resource.plural) == ("apiextensions.k8s.io", "customresourcedefinitions")
        and request.action in (enums.action.CREATE, enums.action.UPDATE)
        and not request.subresource
        and isinstance(request.data, Mapping)
    )


def refuse_invalid_crd(definition: Mapping[str, Any]) -> None:
    """The API server's 422 for a CRD whose defaults break its own schema or CEL rules (nothing is stored)."""
    problems = default_violations(definition)
    if not problems:
        return
    name = (definition.get("metadata") or {}).get("name", "")
    raise k8s.KubernetesError(
        status=422,
        reason="Invalid",
        message=f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: [{", ".join(problems)}]',
        details={
            "name": name,
            "group": "apiextensions.k8s.io",
            "kind": "CustomResourceDefinition",
            "causes": [
                {"reason": "FieldValueInvalid", "field": field, "message": message}
                for field, message in (problem.split(": ", 1) for problem in problems)
            ],
        },
    )


def _simulate_controllers(resource: kmock.resource, obj: dict[str, Any]) -> None:
    """What the Deployment controller would report once every replica of the new template is available."""
    if (resource.group, resource.plural) != ("apps", "deployments"):
        return
    replicas = int((obj.get("spec") or {}).get("replicas", 1))
    obj["status"] = {
        "observedGeneration": obj["metadata"]["generation"],
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ],
    }


class EmulatorThread:
    """The emulator on a free loopback port, served by its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: QtEmulator | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)

    def start(self) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as error:  # reported to start()
            self._error = error
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with QtEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[[QtEmulator], _T]) -> _T:
        """Run ``fn(emulator)`` on the emulator's loop: its object store is not thread-safe."""
        assert self.emulator is not None
        emulator = self.emulator

        async def run() -> _T:
            async with emulator._lock:
                return fn(emulator)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def history(self, resource: str, namespace: str | None, name: str) -> list[dict[str, Any]]:
        """Every stored version of an object, oldest first (deletions left out)."""

        def versions(emulator: QtEmulator) -> list[dict[str, Any]]:
            key = (kmock.resource(resource), namespace, name)
            if key not in emulator.objects:
                return []
            return [copy.deepcopy(dict(v.raw)) for v in emulator.objects[key].history.raw if v is not None]

        return self.call(versions)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for kopf, the kubernetes client and kubectl pointing at the emulator."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
            "current-context": "emulator",
        }
        path.write_text(yaml.safe_dump(config))
        return path


@dataclass
class EmulatedCluster(Cluster):
    emulator: EmulatorThread | None = None

    def history(self, kind: str, name: str) -> list[dict[str, Any]]:
        """Every version the emulator stored of one of our custom resources, oldest first."""
        assert self.emulator is not None
        plural = {"TradingPolicy": "tradingpolicies", "KillSwitch": "killswitches", "ExitRollout": "exitrollouts"}
        return self.emulator.history(f"{GROUP}/{VERSION}/{plural[kind]}", self.namespace, name)

    def first_version(self, resource: str, name: str) -> int:
        """The resourceVersion an object was created with (one global counter: the order of creation)."""
        assert self.emulator is not None
        return int(self.emulator.history(resource, self.namespace, name)[0]["metadata"]["resourceVersion"])
