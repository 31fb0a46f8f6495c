"""ExitRollout: the stable bucket, is_live precedence, split and the rollout hash (pure)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from quantum_trader.exits.rollout import (
    ALL_SHADOW,
    RolloutConfig,
    RolloutError,
    is_live,
    parse_rollout_hash,
    parse_symbol_list,
    split_symbols,
    stable_bucket,
)

SYMBOLS = [f"SYM{i}USDT" for i in range(400)] + ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]


def test_bucket_is_sha256_based_and_in_range():
    for symbol in SYMBOLS:
        bucket = stable_bucket(symbol)
        assert 0 <= bucket < 100
        assert bucket == int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:8], "big") % 100


def test_bucket_is_the_same_in_another_process_with_another_hash_seed():
    code = (
        "import json, sys; from quantum_trader.exits.rollout import stable_bucket; "
        "print(json.dumps({s: stable_bucket(s) for s in json.loads(sys.argv[1])}))"
    )
    here = {s: stable_bucket(s) for s in SYMBOLS}
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(SYMBOLS)],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        )
        assert json.loads(out.stdout) == here


def test_bucket_normalizes_case_and_spaces():
    assert stable_bucket(" btcusdt ") == stable_bucket("BTCUSDT")


def test_buckets_spread_over_the_range():
    buckets = [stable_bucket(s) for s in SYMBOLS]
    assert len(set(buckets)) > 80  # 405 symbols into 100 buckets: a broken hash would cluster
    share = sum(b < 50 for b in buckets) / len(buckets)
    assert 0.4 < share < 0.6


BTC = stable_bucket("BTCUSDT")


@pytest.mark.parametrize(
    ("mode", "percent", "pinned_live", "pinned_shadow", "expected"),
    [
        ("SHADOW", 100, (), (), False),  # the mode outranks the rollout
        ("SHADOW", 100, ("BTCUSDT",), (), False),  # even a pinned-live symbol
        ("shadow", 0, (), (), False),
        ("LIVE", 0, (), (), False),
        ("LIVE", 100, (), (), True),
        ("LIVE", BTC, (), (), False),  # bucket == percent is not under it
        ("LIVE", BTC + 1, (), (), True),
        ("LIVE", 0, ("BTCUSDT",), (), True),
        ("LIVE", 0, ("btcusdt",), (), True),
        ("LIVE", 100, (), ("BTCUSDT",), False),
        ("LIVE", 100, ("BTCUSDT",), ("BTCUSDT",), False),  # contradictory pins: not live
        ("live", 100, ("ETHUSDT",), ("SOLUSDT",), True),
    ],
)
def test_is_live_table(mode, percent, pinned_live, pinned_shadow, expected):
    assert is_live("BTCUSDT", mode, percent, pinned_live, pinned_shadow) is expected


@pytest.mark.parametrize(("mode", "percent"), [("ON", 50), ("", 50), ("LIVE", -1), ("LIVE", 101), ("LIVE", True)])
def test_is_live_refuses_bad_config(mode, percent):
    with pytest.raises(RolloutError):
        is_live("BTCUSDT", mode, percent)


def test_raising_the_percent_only_adds_symbols():
    previous: set[str] = set()
    for percent in range(0, 101, 5):
        live, shadow = split_symbols(SYMBOLS, "LIVE", percent)
        assert previous <= set(live)
        assert set(live) | set(shadow) == set(SYMBOLS) and not set(live) & set(shadow)
        previous = set(live)
    assert previous == set(SYMBOLS)


def test_split_keeps_order_drops_duplicates_and_applies_pins():
    live, shadow = split_symbols(
        ["ETHUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"], "LIVE", 0, pinned_live=["SOLUSDT", "ETHUSDT"]
    )
    assert live == ("ETHUSDT", "SOLUSDT")
    assert shadow == ("BTCUSDT",)
    assert split_symbols(["BTCUSDT"], "SHADOW", 100, pinned_live=["BTCUSDT"]) == ((), ("BTCUSDT",))


def test_config_matches_the_functions_and_round_trips_through_the_hash():
    config = RolloutConfig(mode="live", percent=30, pinned_live=("ethusdt",), pinned_shadow=("BTCUSDT",))
    assert config.mode == "LIVE" and config.pinned_live == ("ETHUSDT",)
    for symbol in SYMBOLS:
        assert config.is_live(symbol) == is_live(symbol, "LIVE", 30, ("ETHUSDT",), ("BTCUSDT",))
    assert parse_rollout_hash(config.to_hash(), ALL_SHADOW) == config
    assert config.split(["BTCUSDT", "ETHUSDT"]) == (("ETHUSDT",), ("BTCUSDT",))


FALLBACK = RolloutConfig(mode="LIVE", percent=40, pinned_live=("ETHUSDT",), pinned_shadow=(), source="policy")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, FALLBACK),
        ({}, FALLBACK),
        ({"mode": "SHADOW"}, RolloutConfig("SHADOW", 40, ("ETHUSDT",), ())),
        ({"percent": "5"}, RolloutConfig("LIVE", 5, ("ETHUSDT",), ())),
        ({"pinned_live": ""}, RolloutConfig("LIVE", 40, (), ())),  # present but empty: no pins
        ({"pinned_shadow": "BTCUSDT, SOLUSDT,"}, RolloutConfig("LIVE", 40, ("ETHUSDT",), ("BTCUSDT", "SOLUSDT"))),
        (
            {"mode": "LIVE", "percent": "100", "pinned_live": "", "pinned_shadow": "XRPUSDT"},
            RolloutConfig("LIVE", 100, (), ("XRPUSDT",)),
        ),
    ],
)
def test_parse_rollout_hash_falls_back_per_field(raw, expected):
    assert parse_rollout_hash(raw, FALLBACK) == expected


@pytest.mark.parametrize(
    "raw", [{"mode": "ENABLED"}, {"percent": "fifty"}, {"percent": "150"}, {"percent": "-3"}, {"percent": "2.5"}]
)
def test_parse_rollout_hash_refuses_garbage(raw):
    with pytest.raises(RolloutError):
        parse_rollout_hash(raw, FALLBACK)


def test_all_shadow_puts_nothing_live():
    assert ALL_SHADOW.split(SYMBOLS) == ((), tuple(SYMBOLS))


def test_parse_symbol_list():
    assert parse_symbol_list(" btcusdt ,ETHUSDT,,BTCUSDT ") == ("BTCUSDT", "ETHUSDT")
    assert parse_symbol_list("") == ()
