"""Replay: ticks derived only from bars, deterministic ids and order, pacing against an injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantum_trader.contracts.policy import MarketDataSource, MarketDataSpec
from quantum_trader.data.errors import DataError
from quantum_trader.data.klines import Kline, kline_file_name, write_klines
from quantum_trader.data.replay import Pacer, expand_files, kline_to_tick, replay_ticks, tick_id
from quantum_trader.data.source import market_ticks
from quantum_trader.data.synthetic import synthetic_klines

MINUTE = 60_000


def write_series(directory: Path, symbol: str, bars: int, seed: int = 1, interval: str = "1m") -> Path:
    rows = list(synthetic_klines(symbol, seed=seed, bars=bars, interval=interval))
    path = directory / kline_file_name(symbol, interval, rows[0].open_time, rows[-1].open_time)
    write_klines(path, rows)
    return path


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_bar_becomes_a_tick_at_its_close() -> None:
    kline = Kline(
        1_000_000_020_000,
        10.0,
        12.0,
        9.0,
        11.0,
        5.0,
        1_000_000_079_999,
        55.0,
        3,
        2.0,
        22.0,
        symbol="ETHUSDT",
        interval="1m",
        source="replay:ETHUSDT-1m-2001-09.csv",
    )
    tick = kline_to_tick(kline, spread_bps=2.0)
    assert tick.symbol == "ETHUSDT"
    assert tick.price == 11.0
    assert tick.bid == pytest.approx(11.0 - 11.0 * 1e-4)
    assert tick.ask == pytest.approx(11.0 + 11.0 * 1e-4)
    assert tick.ask - tick.price == pytest.approx(tick.price - tick.bid)
    assert (tick.volume, tick.high, tick.low) == (5.0, 12.0, 9.0)
    assert tick.event_time == kline.close_time
    assert tick.source == "replay:ETHUSDT-1m-2001-09.csv"
    assert tick_id(tick) == "ETHUSDT:1000000079999"
    zero = kline_to_tick(kline, spread_bps=0.0)
    assert zero.bid == zero.ask == zero.price
    with pytest.raises(DataError, match="spread_bps"):
        kline_to_tick(kline, spread_bps=-1)


def test_replay_merges_files_in_time_order_with_symbol_ties(tmp_path: Path) -> None:
    files = [write_series(tmp_path, "SOLUSDT", 30), write_series(tmp_path, "BTCUSDT", 20, seed=2)]
    ticks = list(replay_ticks(files))
    assert len(ticks) == 50
    keys = [(t.event_time, t.symbol) for t in ticks]
    assert keys == sorted(keys)
    assert ticks[0].symbol == "BTCUSDT" and ticks[1].symbol == "SOLUSDT"
    assert {t.source for t in ticks} == {f"replay:{f.name}" for f in files}
    assert len({tick_id(t) for t in ticks}) == 50
    assert list(replay_ticks(list(reversed(files)))) == ticks


def test_replay_skip_and_max_bars_apply_per_file(tmp_path: Path) -> None:
    files = [write_series(tmp_path, "SOLUSDT", 30), write_series(tmp_path, "BTCUSDT", 30, seed=2)]
    all_ticks = [t for t in replay_ticks(files) if t.symbol == "BTCUSDT"]
    ticks = list(replay_ticks(files, skip_bars=5, max_bars=10))
    assert len(ticks) == 20
    assert [t for t in ticks if t.symbol == "BTCUSDT"] == all_ticks[5:15]


def test_replay_refuses_two_files_of_one_symbol(tmp_path: Path) -> None:
    one = write_series(tmp_path, "BTCUSDT", 5)
    two = write_series(tmp_path, "BTCUSDT", 5, interval="1h")
    with pytest.raises(DataError, match="two files for BTCUSDT"):
        replay_ticks([one, two])


def test_expand_files_globs_sorts_and_refuses_empty_patterns(tmp_path: Path) -> None:
    b = write_series(tmp_path, "BTCUSDT", 3)
    a = write_series(tmp_path, "ADAUSDT", 3)
    assert expand_files([str(tmp_path / "*-1m-*.csv")]) == [a, b]
    assert expand_files([str(b), str(tmp_path / "*.csv")]) == [a, b]
    with pytest.raises(DataError, match="no kline file matches"):
        expand_files([str(tmp_path / "ETH*.csv")])
    with pytest.raises(DataError, match="no kline file matches"):
        expand_files([str(tmp_path / "missing.csv")])


def test_market_ticks_replay_synthetic_and_live(tmp_path: Path) -> None:
    path = write_series(tmp_path, "BTCUSDT", 40)
    replay = MarketDataSpec(source=MarketDataSource.REPLAY, files=[str(tmp_path / "*.csv")], skip_bars=10, max_bars=5)
    ticks = list(market_ticks(replay, ["ETHUSDT"]))
    assert [t.symbol for t in ticks] == ["BTCUSDT"] * 5
    assert ticks == list(replay_ticks([path]))[10:15]

    synthetic = MarketDataSpec(source=MarketDataSource.SYNTHETIC, seed=3, synthetic_bars=50, skip_bars=10, max_bars=30)
    ticks = list(market_ticks(synthetic, ["ETHUSDT", "BTCUSDT"]))
    assert len(ticks) == 60
    assert {t.source for t in ticks} == {"synthetic:3"}
    full = list(market_ticks(MarketDataSpec(source=MarketDataSource.SYNTHETIC, seed=3, synthetic_bars=50), ["BTCUSDT"]))
    assert [t for t in ticks if t.symbol == "BTCUSDT"] == full[10:40]

    with pytest.raises(DataError, match="no files"):
        market_ticks(MarketDataSpec(source=MarketDataSource.REPLAY), ["BTCUSDT"])
    with pytest.raises(DataError, match="live"):
        market_ticks(MarketDataSpec(source=MarketDataSource.LIVE), ["BTCUSDT"])


def test_pacer_full_speed_never_waits() -> None:
    clock = FakeClock()
    pacer = Pacer(0, clock=clock)
    assert [pacer.delay(t) for t in (0, MINUTE, 10 * MINUTE)] == [0.0, 0.0, 0.0]


def test_pacer_real_time_and_faster() -> None:
    clock = FakeClock()
    real = Pacer(1, clock=clock)
    assert real.delay(5 * MINUTE) == 0.0  # the first event starts the clock
    assert real.delay(6 * MINUTE) == pytest.approx(60.0)
    clock.now += 60.0
    assert real.delay(6 * MINUTE) == pytest.approx(0.0)

    clock = FakeClock()
    fast = Pacer(60, clock=clock)
    fast.delay(0)
    assert fast.delay(MINUTE) == pytest.approx(1.0)
    clock.now += 0.25
    assert fast.delay(MINUTE) == pytest.approx(0.75)
    assert fast.delay(3 * MINUTE) == pytest.approx(2.75)  # measured from the start, so no drift accumulates


def test_pacer_does_not_wait_when_behind_and_catches_up() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock)
    pacer.delay(0)
    clock.now += 30.0  # a consumer stalled for 30 s: 300 s of market time at 10x
    assert pacer.delay(MINUTE) == 0.0
    assert pacer.delay(5 * MINUTE) == 0.0
    assert pacer.delay(6 * MINUTE) == pytest.approx(6.0)


def test_pacer_scale_plays_hourly_bars_one_per_second() -> None:
    clock = FakeClock()
    hour = 3_600_000
    pacer = Pacer(1, scale=1000 / hour, clock=clock)
    pacer.delay(0)
    assert pacer.delay(hour) == pytest.approx(1.0)
    with pytest.raises(DataError):
        Pacer(-1)
    with pytest.raises(DataError):
        Pacer(1, scale=0)
