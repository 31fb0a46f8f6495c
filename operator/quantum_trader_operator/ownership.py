"""Fields of a child that another field manager wrote, and the JSON patch that takes them away (pure).

Why a forced server-side apply is not enough: it takes back every field the operator applies (a changed
image moves to the operator's manager), but a field the operator never applies — an env var from
``kubectl set env``, a label from ``kubectl label``, a volume from ``kubectl set volume`` — belongs to the
manager that wrote it, and apply only removes fields the *applier* stops applying. So repair is two steps:
the forced apply, then a JSON patch removing what ``managedFields`` says other managers own and the desired
manifest does not contain. A removed field leaves every manager's set (the API server drops removed fields
from all of them), so the foreign manager's entry disappears and the drift with it. The patch starts with
``test`` operations on the resourceVersion and on every list item's key, so an object that changed since it
was read is refused (422) rather than patched at a shifted index; the next reconcile reads it again.

``metadata.managedFields[].fieldsV1`` paths: ``f:<field>``, ``k:<json>`` (an item of a keyed list, matched
by those key fields), ``v:<json>`` (a set member), ``i:<n>`` (an index), ``"."`` (the node itself).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quantum_trader_operator import kube_view as kv

SYSTEM_MANAGERS = frozenset({"kube-controller-manager", "kubelet"})
"""controllers whose writes to our children are normal operation (the Deployment revision annotation)"""
WATCHED_TOP_LEVEL = ("f:spec", "f:data", "f:binaryData", "f:metadata")
WATCHED_METADATA = frozenset({"f:labels", "f:annotations"})
"""of ``metadata`` only labels and annotations are someone's edit; the rest is identity and bookkeeping"""

_MISSING = object()


@dataclass(frozen=True, slots=True)
class ForeignField:
    """One field another manager owns that the operator's manifest does not set (or sets otherwise)."""

    manager: str
    operation: str
    subresource: str
    time: str
    path: str
    """readable, e.g. ``.spec.template.spec.containers[name=governor].env[name=EXTRA]``"""
    pointer: str
    """JSON pointer (RFC 6901) to the field in the object as read"""
    guards: tuple[tuple[str, Any], ...]
    """(pointer, value) pairs that must still hold for the pointer to mean this field (list item keys)"""
    desired: bool
    """the manifest sets this field to another value: the forced apply takes it back. False: the manifest
    lacks it, so only removing it repairs the object"""

    @property
    def written_by(self) -> str:
        via = f" via /{self.subresource}" if self.subresource else ""
        at = f" at {self.time}" if self.time else ""
        return f"{self.manager or '(unnamed manager)'} ({self.operation or 'Update'}{via}{at})"


def foreign_fields(live: Mapping[str, Any], desired: Mapping[str, Any] | None, our_manager: str) -> list[ForeignField]:
    """Fields of ``live`` owned by managers other than ``our_manager`` that differ from ``desired``.

    Shared ownership of an equal value (another manager applied what the operator applies) is not drift.
    Status writes and the controllers in :data:`SYSTEM_MANAGERS` are normal. ``desired`` None: nothing is
    desired, so every foreign field counts.
    """
    found: list[ForeignField] = []
    for entry in kv.meta(live).get("managedFields") or []:
        manager = str(entry.get("manager") or "")
        subresource = str(entry.get("subresource") or "")
        if manager == our_manager or manager in SYSTEM_MANAGERS or subresource == "status":
            continue
        tree = entry.get("fieldsV1") or {}
        context = _Entry(manager, str(entry.get("operation") or ""), subresource, str(entry.get("time") or ""))
        for top in WATCHED_TOP_LEVEL:
            if top not in tree:
                continue
            subtree = tree[top]
            if top == "f:metadata":
                subtree = {k: v for k, v in subtree.items() if k in WATCHED_METADATA}
                if not subtree:
                    continue
            name = top[2:]
            _walk(
                found,
                context,
                subtree,
                live.get(name, _MISSING),
                (desired or {}).get(name, _MISSING),
                f"/{_escape(name)}",
                f".{name}",
                (),
                name,
            )
    return found


@dataclass(frozen=True, slots=True)
class _Entry:
    manager: str
    operation: str
    subresource: str
    time: str


def _walk(
    found: list[ForeignField],
    entry: _Entry,
    tree: Mapping[str, Any],
    live: Any,
    desired: Any,
    pointer: str,
    path: str,
    guards: tuple[tuple[str, Any], ...],
    field: str,
) -> None:
    if live is _MISSING:
        return  # owned, but no longer there: nothing to remove
    children = {k: v for k, v in tree.items() if k != "."}
    if desired is _MISSING:
        found.append(
            ForeignField(entry.manager, entry.operation, entry.subresource, entry.time, path, pointer, guards, False)
        )
        return
    if not children:
        # A map leaf (an atomic struct) carries server defaults the manifest leaves out: not comparable.
        if live != desired and not isinstance(desired, Mapping):
            found.append(
                ForeignField(entry.manager, entry.operation, entry.subresource, entry.time, path, pointer, guards, True)
            )
        return
    for element, subtree in children.items():
        kind, _, raw = element.partition(":")
        if kind == "f" and isinstance(live, Mapping):
            _walk(
                found,
                entry,
                subtree,
                live.get(raw, _MISSING),
                desired.get(raw, _MISSING) if isinstance(desired, Mapping) else _MISSING,
                f"{pointer}/{_escape(raw)}",
                f"{path}.{raw}",
                guards,
                raw,
            )
        elif kind in ("k", "v", "i") and isinstance(live, list):
            index = _find(live, kind, raw)
            if index is None:
                continue
            item = live[index]
            wanted = _MISSING
            if isinstance(desired, list):
                at = _find(desired, kind, raw)
                wanted = desired[at] if at is not None else _MISSING
            item_pointer = f"{pointer}/{index}"
            if kind == "k":
                key = json.loads(raw)
                item_guards = guards + tuple((f"{item_pointer}/{_escape(k)}", v) for k, v in key.items())
                label = "[" + ",".join(f"{k}={v}" for k, v in key.items()) + "]"
            else:
                item_guards = (*guards, (item_pointer, item))
                label = f"[{raw}]"
            _walk(found, entry, subtree, item, wanted, item_pointer, f"{path}{label}", item_guards, field)


def _find(items: list[Any], kind: str, raw: str) -> int | None:
    if kind == "i":
        index = int(raw)
        return index if 0 <= index < len(items) else None
    value = json.loads(raw)
    for index, item in enumerate(items):
        if kind == "v" and item == value:
            return index
        if kind == "k" and isinstance(item, Mapping) and all(item.get(k) == v for k, v in value.items()):
            return index
    return None


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def removal_patch(live: Mapping[str, Any], fields: list[ForeignField]) -> list[dict[str, Any]]:
    """A JSON patch removing every field the manifest lacks; [] when there is none.

    Removals run deepest and highest index first, so an earlier removal never shifts a later pointer; every
    ``test`` comes before them, against the object as read.
    """
    removable = [f for f in fields if not f.desired]
    # A field inside another removed field goes with it.
    pointers = {f.pointer for f in removable}
    removable = [f for f in removable if not any(f.pointer.startswith(p + "/") for p in pointers)]
    if not removable:
        return []
    tests: dict[str, Any] = {}
    version = kv.meta(live).get("resourceVersion")
    if version:
        tests["/metadata/resourceVersion"] = version
    for f in removable:
        for pointer, value in f.guards:
            tests[pointer] = value
    ops: list[dict[str, Any]] = [{"op": "test", "path": p, "value": v} for p, v in tests.items()]
    unique = {f.pointer: f for f in removable}
    for pointer in sorted(unique, key=_pointer_order, reverse=True):
        ops.append({"op": "remove", "path": pointer})
    return ops


def _pointer_order(pointer: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in pointer.split("/")[1:])
