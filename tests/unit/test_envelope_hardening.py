"""Issue 8, defects 2, 3 and 6 in the contracts: every malformed entry is a reason, never a crash.

- 2: decoding raises only ``InvalidMessage``, whatever the entry (huge integers, deep nesting, bytes
  that are not UTF-8 in any field), and the DLQ record keeps the original bytes.
- 3: every number of every message and of the policy spec is finite and bounded; ``true`` is not a
  number; a schema version the consumer does not know, older or newer, is refused.
- 6: symbols are ``[A-Z0-9]{2,20}`` (ASCII), one shared type; the allowlist admission rule per stream.
"""

from __future__ import annotations

import base64
import json
import math
import types
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from quantum_trader.contracts.admission import SCOPES, Admission, SymbolScope, scope_of
from quantum_trader.contracts.envelope import InvalidMessage, dead_letter_record, decode, encode, original_fields
from quantum_trader.contracts.messages import (
    ALL_MESSAGES,
    ExitShadow,
    FeatureVector,
    GovernorDecision,
    Message,
    PlanKind,
    PositionSide,
    ReconcileEvent,
    ReconcileKind,
    Tick,
    TradeClosed,
    check_symbol,
)
from quantum_trader.contracts.policy import PolicyError, PolicySpec, Spec, parse_policy
from quantum_trader.contracts.registry import COMPONENTS, message_of
from tests.malformed import ALLOWED, CONSUMED, CONSUMERS, malformed_fields, numeric_paths, valid_message

T = 1_700_000_000_000

AUDIT_SAMPLES: dict[type[Message], Message] = {
    TradeClosed: TradeClosed(symbol=ALLOWED, trade_id="t", side=PositionSide.LONG, qty=1, entry_price=100,
                             exit_price=110, realized_pnl=10, fees=0.1, exit_reason="tp", exit_controller="exit-brain",
                             opened_at=T, closed_at=T + 1),
    ExitShadow: ExitShadow(symbol=ALLOWED, time=T, action="CLOSE", reason="r", qty=1, price=100),
    GovernorDecision: GovernorDecision(symbol=ALLOWED, plan_id="p", kind=PlanKind.ENTRY, source="s", approved=False,
                                       time=T),
    ReconcileEvent: ReconcileEvent(symbol=ALLOWED, kind=ReconcileKind.MATCHED, explained=True,
                                   internal_side=PositionSide.FLAT, internal_qty=0, internal_entry=0,
                                   exchange_side=PositionSide.FLAT, exchange_qty=0, exchange_entry=0, action="none",
                                   time=T),
}


def sample(model: type[Message]) -> Message:
    for stream in CONSUMED:
        if message_of(stream) is model:
            return valid_message(stream)
    return AUDIT_SAMPLES[model]


def tick_fields(**data_overrides: object) -> dict[str, str]:
    fields = encode(valid_message("market.tick"), id="a")
    if data_overrides:
        data = json.loads(fields["data"])
        data.update(data_overrides)
        fields["data"] = json.dumps(data)
    return fields


def _set(document: dict, path: tuple[str, ...], value: object) -> dict:
    target = document
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    return document


# --- defect 2: decode raises InvalidMessage for everything ------------------------------------------------------


def test_every_sample_round_trips_through_the_strict_decode():
    for model in ALL_MESSAGES:
        message = sample(model)
        assert decode(encode(message, id="m-1"), model).message == message


def test_an_integer_of_thousands_of_digits_is_a_reason_not_a_value_error():
    fields = tick_fields()
    fields["data"] = fields["data"].replace('"event_time":1700000000000', '"event_time":' + "9" * 5000)
    with pytest.raises(InvalidMessage, match="data is not JSON: number out of range"):
        decode(fields, Tick)


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_nesting_is_a_reason_not_a_recursion_error(depth):
    with pytest.raises(InvalidMessage, match="recursion limit"):
        decode({**tick_fields(), "data": "[" * depth + "]" * depth}, Tick)
    nested = tick_fields()
    nested["data"] = nested["data"].replace('"volume":5.0', '"volume":' + '{"a":' * depth + "1" + "}" * depth)
    with pytest.raises(InvalidMessage):
        decode(nested, Tick)


@pytest.mark.parametrize("name", ["type", "v", "id", "corr", "symbol", "data"])
def test_invalid_utf8_in_any_field_is_a_reason(name):
    fields: dict = {k.encode(): v.encode() for k, v in tick_fields().items()}
    fields[name.encode()] = fields[name.encode()][:2] + b"\xff\xfe" + fields[name.encode()][2:]
    with pytest.raises(InvalidMessage, match="UTF-8"):
        decode(fields, Tick)


def test_the_dlq_record_keeps_bytes_that_are_not_utf8_as_base64():
    raw = {b"type": b"Tick", b"data": b"{\xff}", b"n\xffame": b"ok"}
    record = dead_letter_record(reason="r", stream="market.tick", entry_id="1-0", group="features", deliveries=1,
                                fields=raw, time_ms=5)
    assert record["orig.type"] == "Tick"
    assert base64.b64decode(record["orig.data.b64"]) == b"{\xff}"
    assert record["orig.b64:" + base64.b64encode(b"n\xffame").decode()] == "ok"
    assert all(isinstance(v, str) for v in record.values())
    assert record["reason"] == "r" and record["group"] == "features" and record["entry_id"] == "1-0"


def test_a_reason_is_never_empty_nor_unbounded():
    record = dead_letter_record(reason="", stream="s", entry_id="1-0", group="g", deliveries=1, fields={}, time_ms=1)
    assert record["reason"] == "unknown"
    long = dead_letter_record(reason="x" * 10_000, stream="s", entry_id="1-0", group="g", deliveries=1, fields={},
                              time_ms=1)
    assert len(long["reason"]) == 1000


def test_the_envelope_symbol_must_be_the_messages_own():
    with pytest.raises(InvalidMessage, match="envelope symbol 'ETHUSDT'"):
        decode({**tick_fields(), "symbol": "ETHUSDT"}, Tick)
    with pytest.raises(InvalidMessage, match="missing envelope field 'symbol'"):
        decode({k: v for k, v in tick_fields().items() if k != "symbol"}, Tick)


@pytest.mark.parametrize("bad", ["", " ", "a b", "a\nb", "\uff49\uff44", "i" * 257])
def test_ids_are_printable_ascii_and_bounded(bad):
    with pytest.raises(InvalidMessage):
        decode({**tick_fields(), "id": bad or ""}, Tick)


@pytest.mark.parametrize("stream", CONSUMED)
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_generated_malformed_entry_is_refused_with_a_reason(stream, data):
    """The generator of the process fuzz test only makes entries the edge must refuse."""
    mutation, fields = data.draw(malformed_fields(stream))
    admission = Admission.for_component(CONSUMERS[stream][0], [stream], [ALLOWED])
    try:
        envelope = decode(fields, message_of(stream))
    except InvalidMessage as error:
        assert str(error), mutation
    else:
        refusals = [Admission.for_component(group, [stream], [ALLOWED]).refusal(stream, envelope.symbol)
                    for group in CONSUMERS[stream]]
        assert mutation == "outside-allowlist" and all(refusals), (mutation, fields)
        assert admission.refusal(stream, envelope.symbol)
    record = original_fields(fields)
    assert len(record) == len(fields) and all(isinstance(v, str) for v in record.values())


# --- defect 3: finite, bounded, strict numbers; known versions only ---------------------------------------------


def _all_message_numbers() -> list[tuple[type[Message], tuple[str, ...]]]:
    return [(model, path) for model in ALL_MESSAGES for path in numeric_paths(model)]


MESSAGE_NUMBERS = _all_message_numbers()


@pytest.mark.parametrize(
    ("model", "path"), MESSAGE_NUMBERS, ids=[f"{m.__name__}.{'.'.join(p)}" for m, p in MESSAGE_NUMBERS]
)
def test_every_number_of_every_message_is_finite_bounded_and_strict(model, path):
    message = sample(model)
    for bad in (math.inf, -math.inf, math.nan, 1e300, -1e300):
        with pytest.raises(ValidationError):
            model.model_validate(_set(message.model_dump(), path, bad))
    fields = encode(message, id="m")
    for token in ("true", "false", "Infinity", "NaN", '"1"'):
        text = json.dumps(_set(json.loads(fields["data"]), path, "\u0000")).replace('"\\u0000"', token)
        with pytest.raises(InvalidMessage):
            decode({**fields, "data": text}, model)



def _numeric_sequences() -> list[tuple[type[Message], str]]:
    """Fields holding a sequence of numbers (``FeatureVector.values``): numeric_paths sees only scalars."""
    found = []
    for model in ALL_MESSAGES:
        for name, info in model.model_fields.items():
            args = typing.get_args(info.annotation)
            if typing.get_origin(info.annotation) is tuple and args and _scalar_number(args[0]):
                found.append((model, name))
    return found


def _scalar_number(annotation: object) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation in (int, float)


NUMBER_SEQUENCES = _numeric_sequences()


def test_the_number_sequences_are_found():
    assert (FeatureVector, "values") in NUMBER_SEQUENCES


@pytest.mark.parametrize(("model", "name"), NUMBER_SEQUENCES, ids=[f"{m.__name__}.{n}" for m, n in NUMBER_SEQUENCES])
def test_every_number_in_a_sequence_is_finite_bounded_and_strict(model, name):
    message = sample(model)
    fields = encode(message, id="m")
    for token in ("true", "false", "Infinity", "-Infinity", "NaN", "1e400", "1e300", '"1"', "null", "9" * 5000):
        data = json.loads(fields["data"])
        data[name] = ["\u0000", *data[name][1:]]
        text = json.dumps(data).replace('"\\u0000"', token)
        assert f"[{token}," in text
        with pytest.raises(InvalidMessage):
            decode({**fields, "data": text}, model)
    for bad in (math.inf, -math.inf, math.nan, 1e300):
        with pytest.raises(ValidationError):
            model.model_validate({**message.model_dump(), name: (bad, *getattr(message, name)[1:])})

def test_a_message_with_an_infinite_notional_cannot_even_be_made():
    """An ExecutionResult with ``inf`` used to serialize as a null notional; now it fails where it is made."""
    with pytest.raises(ValidationError, match="finite"):
        valid_message("apply.result").model_copy(update={}).model_validate(
            {**valid_message("apply.result").model_dump(), "avg_price": math.inf}
        )


@pytest.mark.parametrize("version", ["0", "2", "99", "-1", "01", " 1", "1.0", "+1", "1_0", "\u0661", "", "v1"])
def test_a_schema_version_the_consumer_does_not_know_is_refused(version):
    with pytest.raises(InvalidMessage, match="schema version"):
        decode({**tick_fields(), "v": version}, Tick)


def test_older_and_newer_versions_say_which_they_are():
    with pytest.raises(InvalidMessage, match="newer than 1"):
        decode({**tick_fields(), "v": "2"}, Tick)
    with pytest.raises(InvalidMessage, match=r"unknown \(known: \[1\]\)"):
        decode({**tick_fields(), "v": "0"}, Tick)


DICT_KEY_OF = {"components": "governor"}
"""a key the policy takes in each mapping of specs (components must be registered ones)"""


def _policy_numbers(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """(alias path, FieldInfo) of every numeric field of the policy spec, nested specs included."""
    found: list[tuple[tuple[str, ...], object]] = []
    for name, info in model.model_fields.items():
        alias = info.alias or name
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Spec):
            found.extend(_policy_numbers(annotation, (*prefix, alias)))
            continue
        if typing.get_origin(annotation) is dict:  # per-component settings: components.<name>.<field>
            value = typing.get_args(annotation)[1]
            if isinstance(value, type) and issubclass(value, Spec):
                found.extend(_policy_numbers(value, (*prefix, alias, DICT_KEY_OF.get(alias, "x"))))
            continue
        args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
        if annotation in (int, float) or any(a in (int, float) for a in args):
            found.append(((*prefix, alias), info))
    return found


POLICY_NUMBERS = _policy_numbers(PolicySpec)


def test_the_policy_numbers_include_those_in_mappings_of_specs():
    assert ("components", "governor", "replicas") in [path for path, _ in POLICY_NUMBERS]


def _nested(path: tuple[str, ...], value: object) -> dict:
    document: dict = {}
    target = document
    for name in path[:-1]:
        target = target.setdefault(name, {})
    target[path[-1]] = value
    return document


@pytest.mark.parametrize(("path", "info"), POLICY_NUMBERS, ids=[".".join(p) for p, _ in POLICY_NUMBERS])
def test_every_number_of_the_policy_is_finite_bounded_and_not_a_boolean(path, info):
    bounded_above = any(hasattr(m, "le") or hasattr(m, "lt") for m in info.metadata)
    bounded_below = any(hasattr(m, "ge") or hasattr(m, "gt") for m in info.metadata)
    assert bounded_above and bounded_below, f"{'.'.join(path)} has no sane bounds"
    for bad in (math.inf, -math.inf, math.nan, True, False, "5", 1e300):
        with pytest.raises(PolicyError, match=".".join(path)):
            parse_policy(_nested(path, bad))


def test_policy_numbers_still_take_integers_for_floats_and_the_yaml_defaults_round_trip():
    spec = parse_policy({"risk": {"maxNotionalPerTrade": 100, "approvalTtlSeconds": 5}, "mode": "paper"})
    assert spec.risk.max_notional_per_trade == 100.0 and spec.risk.approval_ttl_seconds == 5.0
    assert parse_policy(PolicySpec().model_dump(mode="json", by_alias=True)) == PolicySpec()


def test_a_policy_value_that_is_not_plain_data_is_one_clear_error():
    import datetime

    with pytest.raises(PolicyError, match="not plain data"):
        parse_policy({"model": {"name": datetime.date(2024, 1, 1)}})


# --- defect 6: one ASCII symbol type; admission at the edge -----------------------------------------------------

LOOK_ALIKES = [
    "\uff22\uff34\uff23USDT",  # fullwidth BTC
    "\u0412\u0422\u0421USDT",  # Cyrillic VE TE ES
    "BTCUSD\u0422",  # Cyrillic TE at the end
    "BTC\u0661",  # Arabic-Indic digit one
    "btcusdt",
    "B",
    "B" * 21,
    "BTC USDT",
    "BTC-USDT",
    "BTCUSDT\n",
    "",
]


@pytest.mark.parametrize("symbol", LOOK_ALIKES)
def test_look_alike_and_malformed_symbols_are_refused_everywhere(symbol):
    assert symbol.upper() != symbol or not symbol.isascii() or not symbol.isalnum() or not 2 <= len(symbol) <= 20
    with pytest.raises(ValueError, match="upper-case ASCII"):
        check_symbol(symbol)
    with pytest.raises(ValidationError):
        Tick.model_validate({**valid_message("market.tick").model_dump(), "symbol": symbol})
    for document in ({"symbols": [symbol]}, {"exits": {"pinnedLive": [symbol]}}, {"exits": {"pinnedShadow": [symbol]}}):
        with pytest.raises(PolicyError, match="upper-case ASCII"):
            parse_policy(document)


@pytest.mark.parametrize("symbol", ["BTCUSDT", "1000PEPEUSDT", "AB", "A" * 20, "ETH2USDT"])
def test_well_formed_symbols_pass(symbol):
    assert check_symbol(symbol) == symbol
    assert parse_policy({"symbols": [symbol]}).symbols == [symbol]


def test_the_policy_schema_carries_the_symbol_pattern():
    items = PolicySpec.model_json_schema(by_alias=True)["properties"]["symbols"]["items"]
    assert items["pattern"] == "^[A-Z0-9]{2,20}$"


def test_every_input_of_every_component_declares_its_symbol_scope():
    declared = set(SCOPES)
    wired = {(c.name, s) for c in COMPONENTS.values() for s in c.inputs}
    assert declared == wired


def test_position_records_and_exits_are_never_refused_by_symbol():
    """A symbol can leave the allowlist with a position open: its fills, snapshots and exits must pass."""
    for component, stream in [("position-state", "apply.result"), ("apply-layer", "apply.approved"),
                              ("governor", "apply.plan"), ("exit-brain", "position.snapshot"),
                              ("harvest", "position.snapshot")]:
        assert scope_of(component, stream) is SymbolScope.ANY


@pytest.mark.parametrize("scope", list(SymbolScope))
@pytest.mark.parametrize("allowlisted", [True, False])
@pytest.mark.parametrize("has_position", [True, False])
def test_admission_over_every_scope(scope, allowlisted, has_position):
    admission = Admission(frozenset({"BTCUSDT"}), {"s": scope})
    symbol = "BTCUSDT" if allowlisted else "ETHUSDT"
    refused = admission.refusal("s", symbol, has_position=has_position)
    admitted = (
        scope is SymbolScope.ANY
        or allowlisted
        or (scope is SymbolScope.ALLOWLIST_OR_POSITION and has_position)
    )
    assert (refused is None) == admitted
    if refused is not None:
        assert "ETHUSDT" in refused and "allowlist" in refused
    assert admission.needs_position_check("s", symbol) == (
        scope is SymbolScope.ALLOWLIST_OR_POSITION and not allowlisted
    )


def test_an_undeclared_input_is_a_loud_error():
    with pytest.raises(KeyError, match=r"no symbol scope declared for features reading apply\.result"):
        scope_of("features", "apply.result")
