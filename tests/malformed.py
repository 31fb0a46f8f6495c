"""Hypothesis strategies of malformed stream entries (one valid message per consumed stream mutated once), and
helpers that read DLQ records back and check that no component process exited.

Every mutation is one that the contracts must refuse, so each generated entry is invalid whatever
else hypothesis draws: a wrong type name, an unknown schema version, a missing or mangled field, bytes
that are not UTF-8, a numeric field holding ``true``, ``NaN``, ``Infinity``, an integer of thousands of
digits, a string, a list or a number out of every bound, deep nesting, data that is not an object, a
missing or unknown data field, a look-alike symbol (fullwidth, Cyrillic, Arabic-Indic digits, lower
case), and — on streams that admit only the allowlist — a well-formed symbol outside it.
"""

from __future__ import annotations

import base64
import json
import types
import typing
from collections.abc import Callable

from hypothesis import strategies as st
from pydantic import BaseModel

from quantum_trader.contracts.admission import SCOPES, SymbolScope
from quantum_trader.contracts.envelope import encode
from quantum_trader.contracts.messages import (
    SYMBOL_PATTERN,
    Approval,
    ExecutionResult,
    FeatureVector,
    HarvestAction,
    HarvestProposal,
    Message,
    Plan,
    PlanKind,
    PositionSide,
    PositionSnapshot,
    Reservation,
    ResultStatus,
    Side,
    Tick,
    TradeIntent,
)
from quantum_trader.contracts.registry import COMPONENTS, message_of
from quantum_trader.ml.features import FEATURE_NAMES, FEATURE_SET

ALLOWED = "BTCUSDT"
OUTSIDE = ("ZZZUSDT", "DOGEUSDT", "XYZ1", "AB")
"""well-formed symbols outside the allowlist ``[ALLOWED]`` (no open position either)"""

T = 1_700_000_000_000


def _plan(symbol: str = ALLOWED) -> Plan:
    return Plan(symbol=symbol, plan_id="fz-plan", kind=PlanKind.EXIT, side=Side.SELL, qty=0.5, reduce_only=True,
                reason_codes=("fuzz",), source="fuzz", time=T, price=100.0)


def valid_message(stream: str, symbol: str = ALLOWED) -> Message:
    """A message each stream's consumers accept; applying it has no effect on any exchange."""
    samples: dict[str, Callable[[], Message]] = {
        "market.tick": lambda: Tick(symbol=symbol, price=100.0, bid=99.9, ask=100.1, volume=5.0, event_time=T,
                                    source="synthetic:fuzz"),
        # the real feature set, flat (no EMA gap): the baseline strategy reads it and makes no intent
        "features": lambda: FeatureVector(symbol=symbol, time=T, feature_set=FEATURE_SET, names=FEATURE_NAMES,
                                          values=(0.0,) * len(FEATURE_NAMES), price=100.0),
        "trade.intent": lambda: TradeIntent(symbol=symbol, intent_id="fz-intent", time=T, side=Side.BUY,
                                            confidence=0.1, entry_price=100.0, stop_loss=90.0, take_profit=120.0,
                                            leverage=1, notional=50.0, strategy="fuzz", model_digest="fuzz"),
        "apply.plan": lambda: _plan(symbol),
        # long expired: apply-layer refuses it before any request, so a valid one never reaches the exchange
        "apply.approved": lambda: Approval(approval_id="fz-approval", plan=_plan(symbol),
                                           reservation=Reservation(slot=False, notional=0.0, exit_lock=True),
                                           approved_at=1, expires_at=2),
        "apply.result": lambda: ExecutionResult(symbol=symbol, plan_id="fz-plan", approval_id="fz-approval",
                                                client_order_id="fz", status=ResultStatus.REJECTED,
                                                kind=PlanKind.EXIT, side=Side.SELL, reduce_only=True, filled_qty=0.0,
                                                avg_price=0.0, fee=0.0, reason="fuzz",
                                                reservation=Reservation(slot=False, notional=0.0, exit_lock=True),
                                                time=T),
        "position.snapshot": lambda: PositionSnapshot(symbol=symbol, side=PositionSide.FLAT, qty=0.0, entry_price=0.0,
                                                      mark_price=100.0, unrealized_pnl=0.0, time=T,
                                                      source="position-state"),
        "harvest.proposal": lambda: HarvestProposal(symbol=symbol, proposal_id="fz-proposal", time=T,
                                                    action=HarvestAction.HOLD, fraction=0.5, r_multiple=0.1,
                                                    kill_score=0.1, price=100.0),
    }
    return samples[stream]()


CONSUMED = sorted({s for c in COMPONENTS.values() for s in c.inputs})
CONSUMERS = {s: sorted(c.name for c in COMPONENTS.values() if s in c.inputs) for s in CONSUMED}
ALLOWLIST_ONLY = sorted(
    s for s in CONSUMED if all(SCOPES[(group, s)] is not SymbolScope.ANY for group in CONSUMERS[s])
)
"""streams whose every consumer refuses a symbol outside the allowlist (there are no open positions)"""


def _numeric(annotation: object) -> bool:
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_numeric(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _numeric(typing.get_args(annotation)[0])
    return False


def numeric_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every numeric field of ``model``, nested models included, as a path of field names."""
    paths: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(numeric_paths(annotation, (*prefix, name)))
        elif _numeric(annotation):
            paths.append((*prefix, name))
    return paths


def required_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if info.is_required():
            paths.append((*prefix, name))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(required_paths(annotation, (*prefix, name)))
    return paths


HUGE_DIGITS = st.integers(min_value=4301, max_value=20_000).map(lambda n: "9" * n)
NOT_A_NUMBER = st.one_of(
    st.sampled_from(["true", "false", "NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e300",
                     "-1e300", '"1"', '"100.0"', '""', "[]", "[1]", "{}", '{"v": 1}']),
    HUGE_DIGITS,
    HUGE_DIGITS.map(lambda digits: "-" + digits),
    st.integers(min_value=300, max_value=5000).map(lambda depth: "[" * depth + "]" * depth),
)
"""JSON tokens no numeric field takes (``null`` is left out: optional numbers take it)"""

CYRILLIC = {latin: chr(code) for latin, code in zip("ABCEHKMOPTXY", (0x410, 0x412, 0x421, 0x415, 0x41D, 0x41A, 0x41C,
                                                                   0x41E, 0x420, 0x422, 0x425, 0x423), strict=True)}
"""Latin capitals and the Cyrillic capitals that look the same"""
ARABIC_INDIC_ONE = "\u0661"


@st.composite
def look_alike_symbol(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["fullwidth", "cyrillic", "arabic-digit", "lower", "short", "long", "space",
                                 "unicode"]))
    base = draw(st.sampled_from([ALLOWED, "ETHUSDT", "BTCUSDT"]))
    if kind == "fullwidth":
        at = draw(st.integers(0, len(base) - 1))
        return base[:at] + chr(ord(base[at]) + 0xFEE0) + base[at + 1:]
    if kind == "cyrillic":
        at = draw(st.sampled_from([i for i, c in enumerate(base) if c in CYRILLIC]))
        return base[:at] + CYRILLIC[base[at]] + base[at + 1:]
    if kind == "arabic-digit":
        return base + ARABIC_INDIC_ONE
    if kind == "lower":
        return base.lower()
    if kind == "short":
        return base[:1]
    if kind == "long":
        return base * 3
    if kind == "space":
        return base[:3] + " " + base[3:]
    return draw(st.text(min_size=1, max_size=25).filter(lambda s: not SYMBOL_PATTERN.fullmatch(s)))


def _set(document: dict, path: tuple[str, ...], value: object) -> None:
    for name in path[:-1]:
        document = document[name]
    document[path[-1]] = value


def _delete(document: dict, path: tuple[str, ...]) -> None:
    for name in path[:-1]:
        document = document[name]
    document.pop(path[-1], None)


SENTINEL = "\u0000fuzz\u0000"


def _with_raw(document: dict, path: tuple[str, ...], token: str) -> str:
    _set(document, path, SENTINEL)
    return json.dumps(document).replace(json.dumps(SENTINEL), token)


def _symbolled(stream: str, symbol: str) -> dict[str, str]:
    message = valid_message(stream)
    data = message.model_dump(mode="json")
    if stream == "apply.approved":
        data["plan"]["symbol"] = symbol
        envelope_symbol = ""
    else:
        data["symbol"] = symbol
        envelope_symbol = symbol
    fields = encode(message, id="x")
    fields.update(symbol=envelope_symbol, data=json.dumps(data))
    return fields


INVALID_UTF8 = st.sampled_from([b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80"])


@st.composite
def malformed_fields(draw: st.DrawFn, stream: str) -> tuple[str, dict[str | bytes, str | bytes]]:
    """(mutation, entry fields) of one malformed entry for ``stream``; the id is left for the caller."""
    model = message_of(stream)
    fields: dict[str | bytes, str | bytes] = dict(encode(valid_message(stream), id="x"))
    data = json.loads(fields["data"])
    mutations = ["missing", "utf8", "version", "type", "id", "number", "nesting", "not-object", "data-field",
                 "extra-field", "look-alike", "symbol-mismatch", "mangled-name", "not-json"]
    if stream in ALLOWLIST_ONLY:
        mutations.append("outside-allowlist")
    mutation = draw(st.sampled_from(mutations))
    if mutation == "missing":
        del fields[draw(st.sampled_from(["type", "v", "id", "corr", "symbol", "data"]))]
    elif mutation == "utf8":
        name = draw(st.sampled_from(["type", "v", "id", "corr", "symbol", "data"]))
        value = str(fields[name]).encode()
        at = draw(st.integers(0, len(value)))
        fields[name] = value[:at] + draw(INVALID_UTF8) + value[at:]
    elif mutation == "version":
        fields["v"] = draw(st.one_of(
            st.integers(min_value=-5, max_value=10**6).filter(lambda v: v not in model.SCHEMA_VERSIONS).map(str),
            st.sampled_from(["01", " 1", "1 ", "1.0", "+1", "1_0", ARABIC_INDIC_ONE, "v1", "", "true", "1e0"]),
        ))
    elif mutation == "type":
        fields["type"] = draw(st.text(max_size=30).filter(lambda t: t != model.MESSAGE_TYPE))
    elif mutation == "id":
        name = draw(st.sampled_from(["id", "corr"]))
        fields[name] = draw(st.one_of(
            st.just("") if name == "id" else st.just(" "),
            st.integers(257, 5000).map(lambda n: "i" * n),
            st.sampled_from(["a b", "a\nb", "a\x00b", "\uff49\uff44", "\u0438\u0434", "a\tb"]),
        ))
    elif mutation == "number":
        path = draw(st.sampled_from(numeric_paths(model)))
        fields["data"] = _with_raw(data, path, draw(NOT_A_NUMBER))
    elif mutation == "nesting":
        depth = draw(st.integers(min_value=300, max_value=100_000))
        if draw(st.booleans()):
            fields["data"] = "[" * depth + "]" * depth
        else:
            fields["data"] = _with_raw(data, draw(st.sampled_from(numeric_paths(model))),
                                       '{"a":' * depth + "1" + "}" * depth)
    elif mutation == "not-object":
        fields["data"] = draw(st.sampled_from(["[]", "null", "1", '"Tick"', "true", "[{}]"]))
    elif mutation == "not-json":
        fields["data"] = draw(st.sampled_from(["{", "", "{'a': 1}", "{oops", "}{", '{"symbol": }']))
    elif mutation == "data-field":
        _delete(data, draw(st.sampled_from(required_paths(model))))
        fields["data"] = json.dumps(data)
    elif mutation == "extra-field":
        data[draw(st.sampled_from(["extra", "Symbol", "price_", "__class__"]))] = 1
        fields["data"] = json.dumps(data)
    elif mutation == "look-alike":
        fields = dict(_symbolled(stream, draw(look_alike_symbol())))
    elif mutation == "symbol-mismatch":
        fields["symbol"] = "ETHUSDT" if fields["symbol"] != "ETHUSDT" else "BTCUSDT"
    elif mutation == "mangled-name":
        name = draw(st.sampled_from(["type", "v", "id", "data"]))
        value = fields.pop(name)
        fields[name.encode() + draw(INVALID_UTF8)] = value
    else:  # outside-allowlist: well-formed, but refused at the edge by every consumer of the stream
        fields = dict(_symbolled(stream, draw(st.sampled_from(OUTSIDE))))
    return mutation, fields


def entry_of(stream: str, fields: dict, message_id: str) -> dict:
    """``fields`` with ``message_id`` where the mutation left the id alone (it names the entry in the DLQ)."""
    out = dict(fields)
    if out.get("id") == "x":
        out["id"] = message_id
        if out.get("corr") == "x":
            out["corr"] = message_id
    return out


# --- reading what the consumers did ------------------------------------------------------------------------------


def restored(record: dict[str, str]) -> dict[bytes, bytes]:
    """The original entry from its DLQ record (``orig.<name>``, ``.b64`` values, ``b64:`` names)."""
    original: dict[bytes, bytes] = {}
    for key, value in record.items():
        if not key.startswith("orig."):
            continue
        name = key.removeprefix("orig.")
        raw_value = value.encode()
        if name.endswith(".b64"):
            name, raw_value = name.removesuffix(".b64"), base64.b64decode(value)
        raw_name = base64.b64decode(name.removeprefix("b64:")) if name.startswith("b64:") else name.encode()
        original[raw_name] = raw_value
    return original


def as_bytes(fields: dict) -> dict[bytes, bytes]:
    return {(k if isinstance(k, bytes) else k.encode()): (v if isinstance(v, bytes) else str(v).encode())
            for k, v in fields.items()}


def all_running(stack) -> bool:
    stack.supervise_once()
    return all(p.restarts == 0 and p.popen is not None and p.popen.poll() is None for p in stack.processes.values())
