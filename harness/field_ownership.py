"""Field ownership under server-side apply, as the emulator's API server keeps it (``metadata.managedFields``).

A model of what the real API server (structured-merge-diff) does, written from the Kubernetes documentation
("Server-Side Apply": field management, conflicts, merge strategy, "transferring ownership"), independent of
the operator's own reading of ``managedFields`` (``quantum_trader_operator.ownership``) — the emulator is the
stand-in for the server the operator is tested against, so it must not share the code under test.

- A field set is a set of paths; a path is a tuple of fieldsV1 elements: ``f:<field>``, ``k:<json key>`` for
  an item of a keyed list (containers, env, volumes, ...), ``v:<json value>`` for a set member (finalizers).
  Other lists are atomic: owned as one leaf.
- ``apply``: the configuration is merged into the live object (keyed lists merge by key, maps by field,
  everything else is replaced). Fields the merge changes that another manager owns are conflicts: a 409
  unless forced, and with force they move to the applier. Fields the applier applied last time and omits now
  are removed, unless another manager still owns them. The applier then owns exactly what it applied.
- ``update`` (create, merge or JSON patch, status writes): the writer owns what it added or changed; other
  managers lose those fields; every removed field leaves every manager. A manager left with nothing is dropped.

Not modelled: API versions of field sets, defaulting, the ``i:`` index form, and list keys beyond the fields
our children use. Lists and maps a real schema declares otherwise (e.g. ``x-kubernetes-list-type: set`` on a
custom resource) are atomic here — the operator never relies on their ownership.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

KEYED_LISTS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "imagePullSecrets": ("name",),
    "ownerReferences": ("uid",),
    "conditions": ("type",),
}
"""list field -> the fields that identify an item (``x-kubernetes-list-map-keys`` of the built-in types)"""
SET_LISTS = frozenset({"finalizers"})
SERVER_METADATA = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "generateName",
    }
)
"""metadata the server sets or that identifies the object: never owned"""

Path = tuple[str, ...]
_NODE = object()
"""the value of a path that has children (a map or a keyed-list item)"""


class Conflict(Exception):
    """An apply that would change fields other managers own, without force."""

    def __init__(self, conflicts: Mapping[str, set[Path]]) -> None:
        lines = [f'conflict with "{m}": {readable(p)}' for m, paths in sorted(conflicts.items()) for p in sorted(paths)]
        count = len(lines)
        super().__init__(f"Apply failed with {count} conflict{'s' if count != 1 else ''}: " + "; ".join(lines))


def _list_key(field: str, item: Any) -> str | None:
    if not isinstance(item, Mapping):
        return None
    if field == "ports":
        key_field = "containerPort" if "containerPort" in item else "port"
        fields: tuple[str, ...] = (key_field,)
    elif field in KEYED_LISTS:
        fields = KEYED_LISTS[field]
    else:
        return None
    key = {f: item[f] for f in fields if f in item}
    return "k:" + json.dumps(key, sort_keys=True, separators=(",", ":")) if key else None


def _keyed(field: str, items: list[Any]) -> bool:
    return (field in KEYED_LISTS or field == "ports") and all(_list_key(field, i) for i in items)


def flatten(value: Mapping[str, Any], *, status: bool = False) -> dict[Path, Any]:
    """Every path of an object to its value (``_NODE`` for maps and keyed items that have children).

    ``status``: the status part only (the status subresource); otherwise everything but status and the
    server's metadata.
    """
    out: dict[Path, Any] = {}
    for key, child in value.items():
        if key in ("apiVersion", "kind"):
            continue
        if (key == "status") != status:
            continue
        if key == "metadata" and isinstance(child, Mapping):
            child = {k: v for k, v in child.items() if k not in SERVER_METADATA}
            if not child:
                continue
        _walk(out, (f"f:{key}",), key, child)
    return out


def _walk(out: dict[Path, Any], path: Path, field: str, value: Any) -> None:
    if isinstance(value, Mapping):
        if not value:
            out[path] = {}
            return
        out[path] = _NODE
        for key, child in value.items():
            _walk(out, (*path, f"f:{key}"), key, child)
    elif isinstance(value, list) and field in SET_LISTS:
        out[path] = _NODE if value else []
        for item in value:
            out[(*path, "v:" + json.dumps(item, separators=(",", ":")))] = True
    elif isinstance(value, list) and value and _keyed(field, value):
        out[path] = _NODE
        for item in value:
            item_path = (*path, str(_list_key(field, item)))
            out[item_path] = _NODE
            for key, child in item.items():
                _walk(out, (*item_path, f"f:{key}"), key, child)
    else:
        out[path] = copy.deepcopy(value)


def applied_set(flat: Mapping[Path, Any]) -> set[Path]:
    """What an apply of this configuration owns: its leaves and its keyed-list items (not the maps around them)."""
    return {p for p, v in flat.items() if v is not _NODE or p[-1].startswith(("k:", "v:"))}


def changed_paths(old: Mapping[Path, Any], new: Mapping[Path, Any]) -> set[Path]:
    """Paths added, or leaves whose value changed."""
    return {p for p, v in new.items() if p not in old or (v is not _NODE and old[p] != v)}


# ------------------------------------------------------------------ fieldsV1


def encode(paths: Iterable[Path]) -> dict[str, Any]:
    """A field set as ``fieldsV1``: nested ``{element: {...}}``, ``".": {}`` where a path also has children."""
    tree: dict[str, Any] = {}
    wanted = set(paths)
    for path in wanted:
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    for path in wanted:
        node = tree
        for element in path:
            node = node[element]
        if node and "." not in node:
            node["."] = {}
    return tree


def decode(tree: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for element, child in tree.items():
        if element == ".":
            paths.add(prefix)
            continue
        path = (*prefix, element)
        if not child:
            paths.add(path)
        else:
            paths |= decode(child, path)
    return paths


def readable(path: Path) -> str:
    parts = []
    for element in path:
        if element.startswith("f:"):
            parts.append("." + element[2:])
        elif element.startswith("k:"):
            parts.append("[" + ",".join(f"{k}={v!r}" for k, v in json.loads(element[2:]).items()) + "]")
        else:
            parts.append(f"[{element[2:]}]")
    return "".join(parts)


# ------------------------------------------------------------------ merging and removing


def merge(live: Any, config: Any, field: str = "") -> Any:
    """The configuration merged into the live value (structured merge)."""
    if isinstance(live, Mapping) and isinstance(config, Mapping):
        result = copy.deepcopy(dict(live))
        for key, value in config.items():
            result[key] = merge(live[key], value, key) if key in live else copy.deepcopy(value)
        return result
    if isinstance(live, list) and isinstance(config, list) and field in SET_LISTS:
        return [*copy.deepcopy(live), *(copy.deepcopy(v) for v in config if v not in live)]
    if isinstance(live, list) and isinstance(config, list) and _keyed(field, live) and _keyed(field, config):
        by_key = {_list_key(field, item): item for item in config}
        result = [
            merge(item, by_key.pop(_list_key(field, item)), "") if _list_key(field, item) in by_key else item
            for item in copy.deepcopy(live)
        ]
        return [*result, *(copy.deepcopy(item) for item in by_key.values())]
    return copy.deepcopy(config)


def remove_path(obj: dict[str, Any], path: Path) -> None:
    """Remove one field, keyed item or set member from an object (nothing when it is not there)."""
    parent: Any = obj
    field = ""
    for element in path[:-1]:
        parent = _child(parent, element, field)
        if parent is None:
            return
        field = element[2:] if element.startswith("f:") else ""
    last = path[-1]
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif last.startswith("k:") and isinstance(parent, list):
        parent[:] = [item for item in parent if _list_key(field, item) != last]
    elif last.startswith("v:") and isinstance(parent, list):
        value = json.loads(last[2:])
        parent[:] = [item for item in parent if item != value]


def _child(node: Any, element: str, field: str) -> Any:
    if element.startswith("f:"):
        return node.get(element[2:]) if isinstance(node, dict) else None
    if element.startswith("k:") and isinstance(node, list):
        return next((item for item in node if _list_key(field, item) == element), None)
    return None


# ------------------------------------------------------------------ managedFields


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ManagedFields:
    """``metadata.managedFields`` of one object, read and written back."""

    def __init__(self, obj: Mapping[str, Any]) -> None:
        self.entries: list[dict[str, Any]] = []
        self.sets: list[set[Path]] = []
        for entry in (obj.get("metadata") or {}).get("managedFields") or []:
            self.entries.append({k: v for k, v in entry.items() if k != "fieldsV1"})
            self.sets.append(decode(entry.get("fieldsV1") or {}))
        self.touched: set[int] = set()

    def find(self, manager: str, operation: str, subresource: str) -> int:
        for index, entry in enumerate(self.entries):
            if (entry.get("manager"), entry.get("operation"), entry.get("subresource", "")) == (
                manager,
                operation,
                subresource,
            ):
                return index
        entry = {"manager": manager, "operation": operation, "apiVersion": "", "fieldsType": "FieldsV1"}
        if subresource:
            entry["subresource"] = subresource
        self.entries.append(entry)
        self.sets.append(set())
        return len(self.entries) - 1

    def take(self, index: int, paths: set[Path]) -> None:
        if paths - self.sets[index]:
            self.touched.add(index)
        self.sets[index] |= paths

    def drop(self, paths: set[Path], *, except_index: int = -1) -> None:
        for index, owned in enumerate(self.sets):
            if index != except_index and owned & paths:
                owned -= paths
                self.touched.add(index)

    def write(self, obj: dict[str, Any], api_version: str) -> None:
        result = []
        for index, (entry, owned) in enumerate(zip(self.entries, self.sets, strict=True)):
            if not owned:
                continue
            entry = dict(entry)
            entry["apiVersion"] = entry.get("apiVersion") or api_version
            if index in self.touched or "time" not in entry:
                entry["time"] = _now()
            entry["fieldsV1"] = encode(owned)
            result.append(entry)
        meta = obj.setdefault("metadata", {})
        if result:
            meta["managedFields"] = result
        else:
            meta.pop("managedFields", None)


def apply(live: Mapping[str, Any], config: Mapping[str, Any], manager: str, *, force: bool) -> dict[str, Any]:
    """The object after ``manager`` applies ``config`` (raises :class:`Conflict` without ``force``)."""
    fields = ManagedFields(live)
    ours = fields.find(manager, "Apply", "")
    last = set(fields.sets[ours])
    applied = applied_set(flatten(config))
    body = {k: v for k, v in config.items() if k != "status"}
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in SERVER_METADATA}
    if meta:
        body["metadata"] = meta
    else:
        body.pop("metadata", None)
    merged = merge({k: v for k, v in live.items()}, body)
    old_flat = flatten(live)
    changed = changed_paths(old_flat, flatten(merged))
    conflicts = {
        str(entry.get("manager")): owned & changed
        for index, (entry, owned) in enumerate(zip(fields.entries, fields.sets, strict=True))
        if index != ours and not entry.get("subresource") and owned & changed
    }
    if conflicts and not force:
        raise Conflict(conflicts)
    fields.drop(set().union(*conflicts.values()) if conflicts else set(), except_index=ours)
    others = set().union(*(owned for index, owned in enumerate(fields.sets) if index != ours))
    for path in sorted(last - applied - others, key=len):
        remove_path(merged, path)
    removed = set(old_flat) - set(flatten(merged))
    fields.drop(removed)
    if fields.sets[ours] != applied:
        fields.touched.add(ours)
    fields.sets[ours] = applied
    fields.write(merged, str(config.get("apiVersion") or live.get("apiVersion") or ""))
    return merged


def record_update(old: Mapping[str, Any], new: dict[str, Any], manager: str, *, subresource: str = "") -> None:
    """Record on ``new`` that ``manager`` wrote it over ``old`` with a non-apply request (create, patch, put)."""
    fields = ManagedFields(old)
    status = subresource == "status"
    old_flat, new_flat = flatten(old, status=status), flatten(new, status=status)
    written = changed_paths(old_flat, new_flat)
    removed = set(old_flat) - set(new_flat)
    index = fields.find(manager, "Update", subresource)
    fields.drop(written, except_index=index)
    fields.drop(removed)
    fields.take(index, written)
    fields.write(new, str(new.get("apiVersion") or old.get("apiVersion") or ""))
