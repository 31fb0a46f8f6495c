"""Registry, wiring check, policy spec, envelope: the interface every part relies on."""

from __future__ import annotations

import pytest

from quantum_trader.contracts.envelope import InvalidMessage, decode, encode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import Plan, PlanKind, Side, Tick, TradeIntent
from quantum_trader.contracts.policy import PolicyError, PolicySpec, parse_policy
from quantum_trader.contracts.registry import COMPONENTS, STREAMS, check_wiring

DIGEST = "ghcr.io/qt/quantum-trader@sha256:" + "a" * 64


def test_every_stream_of_design_section_3_is_registered():
    assert set(STREAMS) == {
        "market.tick",
        "features",
        "trade.intent",
        "apply.plan",
        "apply.approved",
        "apply.result",
        "position.snapshot",
        "trade.closed",
        "harvest.proposal",
        "exit.shadow",
        "governor.decision",
        "reconcile.events",
    }


def test_every_component_reads_and_writes_registered_streams():
    for spec in COMPONENTS.values():
        assert set(spec.inputs) <= set(STREAMS), spec.name
        assert set(spec.outputs) <= set(STREAMS), spec.name


def test_only_the_governor_writes_approvals_and_only_apply_layer_reads_them():
    writers = [c.name for c in COMPONENTS.values() if "apply.approved" in c.outputs]
    readers = [c.name for c in COMPONENTS.values() if "apply.approved" in c.inputs]
    assert writers == ["governor"] and readers == ["apply-layer"]


def test_the_full_paper_stack_is_closed():
    report = check_wiring(PolicySpec().enabled_components())
    assert report.valid and report.unconsumed == ()


@pytest.mark.parametrize(
    ("enabled", "unproduced", "unconsumed"),
    [
        (["governor", "apply-layer"], {"apply.plan": ("governor",)}, ("apply.result",)),
        (["features"], {"market.tick": ("features",)}, ("features",)),
        (["market-data", "features", "ai-engine"], {}, ("trade.intent",)),
        (["heat-gate"], {"harvest.proposal": ("heat-gate",)}, ("apply.plan",)),
    ],
)
def test_wiring_reports_unproduced_and_unconsumed_streams(enabled, unproduced, unconsumed):
    report = check_wiring(enabled)
    assert report.unproduced == unproduced
    assert report.unconsumed == unconsumed
    assert report.valid is (not unproduced)


def test_wiring_names_unknown_components():
    report = check_wiring(["governor", "execution-result-reader"])
    assert report.unknown_components == ("execution-result-reader",)
    assert not report.valid
    assert "unknown components: execution-result-reader" in report.describe()


def test_disabling_market_data_breaks_the_wiring_with_a_clear_message():
    policy = parse_policy({"components": {"market-data": {"enabled": False}}})
    report = check_wiring(policy.enabled_components())
    assert not report.valid
    assert "market.tick is read by features, exit-brain, harvest, exchange-sim" in report.describe()


def test_exchange_sim_runs_only_in_paper_mode():
    live = parse_policy({"mode": "testnet", "exchangeSecretRef": {"name": "binance"}}).enabled_components()
    assert "exchange-sim" not in live and "exchange-sim" in PolicySpec().enabled_components()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"image": "quantum-trader:latest"}, "must be pinned by digest"),
        ({"mode": "live", "exchangeSecretRef": {"name": "k"}}, "mode live needs confirmLive: true"),
        ({"mode": "live", "confirmLive": True}, "mode live needs exchangeSecretRef"),
        ({"risk": {"maxNotionalPerTrade": 500, "maxTotalNotional": 100}}, "must not exceed maxTotalNotional"),
        ({"risk": {"maxOpenPositions": 0}}, "risk.maxOpenPositions"),
        ({"symbols": ["btcusdt"]}, "upper-case"),
        ({"symbols": []}, "symbols"),
        ({"components": {"execution-result": {}}}, "unknown components"),
        ({"exits": {"rolloutPercent": 101}}, "exits.rolloutPercent"),
        ({"strategy": {"fast": 50, "slow": 10}}, "fast must be shorter"),
        ({"riskk": {}}, "riskk"),
    ],
)
def test_bad_policies_are_refused_with_one_clear_line(document, message):
    with pytest.raises(PolicyError) as caught:
        parse_policy(document)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_pinned_image_and_a_trading_policy_object_are_accepted():
    policy = parse_policy({"kind": "TradingPolicy", "spec": {"image": DIGEST, "symbols": ["ETHUSDT"]}})
    assert policy.image == DIGEST and policy.symbols == ["ETHUSDT"]


def test_keys_carry_the_instance_hash_tag():
    keys = Keys("prod.alpha")
    assert keys.stream("apply.plan") == "quantum:{prod.alpha}:stream:apply.plan"
    assert keys.dlq("apply.plan") == "quantum:{prod.alpha}:stream:apply.plan.dlq"
    assert keys.control == "quantum:{prod.alpha}:control"
    with pytest.raises(ValueError):
        Keys("Prod Alpha")


def test_plan_rules_exit_must_be_reduce_only():
    with pytest.raises(ValueError, match="reduce_only"):
        Plan(symbol="BTCUSDT", plan_id="p", kind=PlanKind.EXIT, side=Side.SELL, qty=1, source="x", time=1, price=1)
    with pytest.raises(ValueError, match="qty or notional"):
        Plan(symbol="BTCUSDT", plan_id="p", kind=PlanKind.ENTRY, side=Side.BUY, source="x", time=1, price=1)


def test_intent_levels_must_be_on_the_right_side():
    with pytest.raises(ValueError, match="BUY needs"):
        TradeIntent(
            symbol="BTCUSDT",
            intent_id="i",
            time=1,
            side=Side.BUY,
            confidence=0.5,
            entry_price=100,
            stop_loss=101,
            take_profit=110,
            leverage=1,
            notional=10,
            strategy="s",
            model_digest="d",
        )


def test_decode_refuses_a_newer_schema_and_non_json():
    fields = encode(Tick(symbol="BTCUSDT", price=1, bid=1, ask=1, volume=0, event_time=1, source="x"), id="a")
    with pytest.raises(InvalidMessage, match="newer"):
        decode({**fields, "v": "99"}, Tick)
    with pytest.raises(InvalidMessage, match="not JSON"):
        decode({**fields, "data": "{"}, Tick)
