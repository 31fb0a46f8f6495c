"""What the API server checks about a CRD's defaults when the CRD is created or updated, done the same way here.

kube-apiserver (apiextensions-apiserver, ``schema/defaulting/validation.go``) walks the structural schema and, for
every node with a ``default``, checks that default *as written* — nested defaults are NOT filled in first, so an
object default ``{}`` is checked as ``{}``:

1. pruned: the default has no field the schema does not know ("must not have unknown fields");
2. the node's OpenAPI schema (types, enums, bounds, ``required``...) accepts it;
3. the CEL rules (``x-kubernetes-validations``) of the node and of every node the default reaches accept it,
   evaluated with ``oldSelf`` = the default (transition rules run too) and, when that passes, once more as a
   create (no ``oldSelf``: transition rules skipped), as validation ratcheting does. A rule that cannot be
   evaluated, e.g. ``self.fast`` on ``{}`` ("no such key"), refuses the CRD like a rule that is false.

Defaults under ``additionalProperties`` are forbidden by the API server, so that walk does not follow them.
The CEL messages have the shape of Kubernetes 1.35 and later (kubernetes/kubernetes#132798, #133832), which is what
the v1.36.2 server of issue 12 printed: a rule that cannot be evaluated names the node's type
(``...properties[risk].default: Invalid value: "object": no such key: ... evaluating rule: ...``); a rule that is
false shows the value when it is a string, number or boolean and nothing when it is an object or a list
(``...properties[redis].default: Invalid value: redis: set exactly one of url or managed: true``). Servers
before 1.35 printed the type in both cases; only the part before the detail differs.

Used by the CRD unit tests, the chart's CRD test and the Kubernetes emulator of the integration tests; the CRD
admission tests use its defaulting of written objects (``apply_defaults``), schema and CEL evaluation too.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import celpy
import jsonschema
from celpy import celtypes


def default_violations(crd: Mapping[str, Any]) -> list[str]:
    """Every reason the API server would refuse ``crd`` for one of its defaults (empty: accepted)."""
    versions = crd.get("spec", {}).get("versions") or []
    schemas = [(v.get("schema") or {}).get("openAPIV3Schema") for v in versions]
    if schemas and all(s == schemas[0] for s in schemas):
        # One schema for every version: the API server reports it as the (internal) top-level validation.
        located = [("spec.validation.openAPIV3Schema", schemas[0])]
    else:
        located = [(f"spec.versions[{i}].schema.openAPIV3Schema", s) for i, s in enumerate(schemas)]
    problems: list[str] = []
    for where, schema in located:
        if isinstance(schema, Mapping):
            for path, node in defaulted_nodes(schema, where):
                problems.extend(check_default(node, f"{path}.default"))
    return problems


def defaulted_nodes(node: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(path, node)`` of every node with a default, through properties and items (not additionalProperties)."""
    if "default" in node:
        yield path, node
    if isinstance(node.get("items"), Mapping):
        yield from defaulted_nodes(node["items"], f"{path}.items")
    for name, child in (node.get("properties") or {}).items():
        yield from defaulted_nodes(child, f"{path}.properties[{name}]")


def check_default(node: Mapping[str, Any], path: str) -> list[str]:
    """The API server's checks of one node's default, in its order: pruning, then schema, then CEL."""
    value = node["default"]
    unknown = list(_unknown_fields(node, value, ""))
    if unknown:
        return [f"{_invalid(path, node)}: must not have unknown fields ({', '.join(unknown)})"]
    schema_errors = sorted(
        f"{path}{_json_path(error.absolute_path)}: Invalid value: {error.message}"
        for error in jsonschema.Draft4Validator(to_json_schema(node)).iter_errors(value)
    )
    if schema_errors:
        return schema_errors
    # As an update from the default to itself first; only if that passes, as a create (ratcheting).
    return cel_errors(node, value, value, path) or cel_errors(node, value, None, path)


# ---------------------------------------------------------------- pruning and OpenAPI


def _unknown_fields(node: Mapping[str, Any], value: Any, path: str) -> Iterator[str]:
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, Mapping):
        props = node.get("properties")
        extra = node.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                yield from _unknown_fields(props[key], item, f"{path}.{key}")
            elif isinstance(extra, Mapping):
                yield from _unknown_fields(extra, item, f"{path}.{key}")
            else:
                yield f"{path}.{key}".lstrip(".")
    elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
        for index, item in enumerate(value):
            yield from _unknown_fields(node["items"], item, f"{path}[{index}]")


def to_json_schema(node: Mapping[str, Any], *, strict: bool = False) -> dict[str, Any]:
    """A structural schema node as JSON Schema draft 4 (whose exclusiveMinimum is also a boolean).

    ``strict``: unknown fields are refused (``additionalProperties: false``) where the API server would prune them,
    as ``kubectl apply``'s default strict field validation reports them to the user."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("nullable", "default", "description") or key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(child, strict=strict) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = to_json_schema(value, strict=strict)
        else:
            out[key] = value
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    pruned = "properties" in node and "additionalProperties" not in node
    if strict and pruned and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """The API server's defaulting of an object written to it (not of a CRD's defaults: those are checked as
    written): a missing property with a default gets it, and then that value's own defaults, down properties,
    map values and list items. ``value`` is not changed; the defaulted copy is returned."""
    if isinstance(value, Mapping):
        value = dict(value)
        props = schema.get("properties") or {}
        for name, child in props.items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key in value:
                if key not in props:
                    value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def _json_path(parts: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


# ---------------------------------------------------------------- CEL


@dataclass(frozen=True, slots=True)
class RuleFailure:
    """One ``x-kubernetes-validations`` rule that did not hold for the value at ``path``."""

    path: str
    node: Mapping[str, Any]
    value: Any
    """the rule's ``self``"""
    rule: Mapping[str, Any]
    error: str | None
    """why the rule could not be evaluated (cel-go's words); None: it evaluated to false"""

    @property
    def message(self) -> str:
        return str(self.rule.get("message") or f"failed rule: {self.rule['rule']}")

    def report(self) -> str:
        """The line the API server reports it with (the module docstring gives the shapes)."""
        if self.error is not None:
            return f"{_invalid(self.path, self.node)}: {self.error} evaluating rule: {self.message}"
        # fieldPath moves the path, not the value: the value shown is still the rule's ``self``.
        return f"{_invalid_value(self.path + (self.rule.get('fieldPath') or ''), self.value)}: {self.message}"


def cel_errors(node: Mapping[str, Any], value: Any, old: Any, path: str) -> list[str]:
    """The CEL validator's errors over ``value``, as the API server words them."""
    return [failure.report() for failure in rule_failures(node, value, old, path)]


def rule_failures(node: Mapping[str, Any], value: Any, old: Any, path: str = "self") -> list[RuleFailure]:
    """The CEL validator over ``value`` (``old``: the object before an update, None on create): the node's rules,
    then its properties, map values and list items. Transition rules (``oldSelf``) run only with an old value;
    items of a map list meet their old selves by key, other list items are new."""
    if value is None:
        return []
    failures: list[RuleFailure] = []
    for rule in node.get("x-kubernetes-validations") or []:
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": to_cel(node, value)}
        if transition:
            activation["oldSelf"] = to_cel(node, old)
        try:
            result = program(rule["rule"]).evaluate(activation)
        except celpy.CELEvalError as error:
            result = error
        if not isinstance(result, celtypes.BoolType):
            failures.append(RuleFailure(path, node, value, rule, _eval_error(result)))
        elif not result:
            failures.append(RuleFailure(path, node, value, rule, None))
    if isinstance(value, Mapping):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        olds = old if isinstance(old, Mapping) else {}
        for key, item in value.items():
            child = props.get(key) if key in props else extra if isinstance(extra, Mapping) else None
            if child is not None:
                failures.extend(rule_failures(child, item, olds.get(key), f"{path}.{key}"))
    elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
        items = node["items"]
        keys = node.get("x-kubernetes-list-map-keys") if node.get("x-kubernetes-list-type") == "map" else None
        olds_by_key = {_map_key(o, keys): o for o in old or []} if keys else {}
        for index, item in enumerate(value):
            old_item = olds_by_key.get(_map_key(item, keys)) if keys else None
            failures.extend(rule_failures(items, item, old_item, f"{path}[{index}]"))
    return failures


def _map_key(item: Any, keys: list[str]) -> tuple[Any, ...]:
    return tuple(item.get(k) for k in keys) if isinstance(item, Mapping) else (item,)


def to_cel(node: Mapping[str, Any], value: Any) -> Any:
    """A value typed as the API server types it for CEL: by the schema, ``number`` always a double."""
    if value is None:
        return None
    kind = node.get("type")
    if kind == "object" and isinstance(value, Mapping):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties") if isinstance(node.get("additionalProperties"), Mapping) else {}
        return celtypes.MapType({celtypes.StringType(k): to_cel(props.get(k, extra), v) for k, v in value.items()})
    if kind == "array" and isinstance(value, list):
        return celtypes.ListType([to_cel(node.get("items") or {}, item) for item in value])
    if kind == "number":
        return celtypes.DoubleType(float(value))
    if kind == "integer":
        return celtypes.IntType(value)
    if kind == "boolean":
        return celtypes.BoolType(value)
    if kind == "string":
        return celtypes.StringType(value)
    return celpy.json_to_cel(value)


@functools.cache
def program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _eval_error(error: Any) -> str:
    """celpy's "no such member in mapping: 'fast'" in cel-go's words: "no such key: fast"."""
    text = str(error.args[0]) if getattr(error, "args", None) else str(error)
    prefix = "no such member in mapping: "
    if text.startswith(prefix):
        return f"no such key: {text.removeprefix(prefix).strip(chr(39))}"
    return text


def _invalid(path: str, node: Mapping[str, Any]) -> str:
    """field.Invalid's prefix with the node's type as the value, as the CEL validator reports a rule it could not
    evaluate (and, before Kubernetes 1.35, a false one)."""
    kind = node.get("type", "object")
    return f'{path}: Invalid value: "{kind}"'


def _invalid_value(path: str, value: Any) -> str:
    """field.Invalid's prefix for a false rule since Kubernetes 1.35: a simple value printed as Go's field errors
    print it (a string quoted, a number or boolean bare), an object or a list left out."""
    if isinstance(value, Mapping | list):
        return f"{path}: Invalid value"
    return f"{path}: Invalid value: {go_value(value)}"


def go_value(value: Any) -> str:
    """A JSON scalar as ``field.Error`` prints it (``%q`` for a string, ``%v`` for a bool, int64 or float64)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if value is None:
        return "null"
    return json.dumps(str(value), ensure_ascii=False)


def _go_float(number: float) -> str:
    """Go's ``%v`` of a float64: the shortest digits that round-trip, in exponent form when the decimal exponent
    is below -4 or at least 6 (``1e+06``, ``1.5e-05``), else plain (``1000``, ``0.25``)."""
    if not math.isfinite(number):
        return "NaN" if math.isnan(number) else ("+Inf" if number > 0 else "-Inf")
    if number == 0:
        return "-0" if math.copysign(1, number) < 0 else "0"
    sign, digits, exponent = Decimal(repr(number)).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + int(exponent)  # digits before the decimal point
    decimal_exponent = point - 1
    head = "-" if sign else ""
    if decimal_exponent < -4 or decimal_exponent >= 6:
        mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
        return f"{head}{mantissa}e{'-' if decimal_exponent < 0 else '+'}{abs(decimal_exponent):02d}"
    if point <= 0:
        return f"{head}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{head}{text}{'0' * (point - len(text))}"
    return f"{head}{text[:point]}.{text[point:]}"
