"""The pure rules of live market data: Binance's message format, bar sequencing, the stale verdict."""

from __future__ import annotations

import pytest

from quantum_trader.data.klines import INTERVALS
from quantum_trader.data.live import (
    HALT_REASSERT_MS,
    Action,
    FeedDown,
    KlineEvent,
    LiveDataError,
    MarkPriceEvent,
    StaleHold,
    interval_name,
    kline_from_rest,
    next_step,
    parse_stream_message,
    select_backfill,
    stale_reasons,
    stream_names,
)
from quantum_trader.data.synthetic import synthetic_klines
from tests.binance_stream import kline_payload, rest_row

MINUTE = 60_000
BARS = list(synthetic_klines("BTCUSDT", seed=3, bars=5))


def test_stream_names_follow_binance_and_are_sorted():
    assert stream_names(["ETHUSDT", "BTCUSDT"], "1m") == [
        "btcusdt@kline_1m",
        "btcusdt@markPrice@1s",
        "ethusdt@kline_1m",
        "ethusdt@markPrice@1s",
    ]


@pytest.mark.parametrize(("ms", "name"), [(0, "1m"), (60_000, "1m"), (3_600_000, "1h"), (300_000, "5m")])
def test_interval_from_bar_length(ms, name):
    assert interval_name(ms) == name


def test_every_fixed_kline_interval_is_found_by_its_length():
    assert {interval_name(length): length for length in INTERVALS.values()} == INTERVALS


def test_a_bar_length_binance_has_no_interval_for_is_refused():
    with pytest.raises(LiveDataError, match="no Binance kline interval is 61000 ms"):
        interval_name(61_000)


@pytest.mark.parametrize("closed", [True, False])
def test_a_combined_stream_kline_parses_to_the_bar_it_carries(closed):
    bar = BARS[2]
    event = parse_stream_message({"stream": "btcusdt@kline_1m", "data": kline_payload(bar, closed, 123)}, "1m")
    assert isinstance(event, KlineEvent) and event.closed is closed and event.event_time == 123
    assert (event.kline.open_time, event.kline.close, event.kline.high, event.kline.low, event.kline.volume) == (
        bar.open_time, bar.close, bar.high, bar.low, bar.volume)  # fmt: skip
    assert event.kline.source == "live"


def test_mark_price_and_error_markers_and_other_events():
    mark = {"stream": "btcusdt@markPrice@1s", "data": {"e": "markPriceUpdate", "E": 5, "s": "BTCUSDT", "p": "100.5"}}
    assert parse_stream_message(mark, "1m") == MarkPriceEvent("BTCUSDT", 100.5, 5)
    down = parse_stream_message({"e": "error", "type": "ConnectionClosedError", "m": "gone"}, "1m")
    assert down == FeedDown("ConnectionClosedError: gone")
    assert parse_stream_message({"stream": "x", "data": {"e": "aggTrade"}}, "1m") is None


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"i": "5m"}, "interval '5m'"),
        ({"c": "abc"}, "close 'abc' is not a number"),
        ({"h": "1"}, "prices out of order"),
        ({"T": 5}, "close time 5"),
        ({"t": None}, "open time None is not an integer"),
        ({"v": "-1"}, "must be finite and not negative"),
        ({"c": "nan"}, "must be finite"),
    ],
)
def test_a_malformed_kline_is_refused_with_what_is_wrong(change, error):
    payload = kline_payload(BARS[1], True, 1)
    payload["k"].update(change)
    with pytest.raises(LiveDataError, match=error):
        parse_stream_message({"stream": "s", "data": payload}, "1m")


def test_a_rest_row_reads_back_as_the_same_bar_labelled_backfill():
    bar = BARS[3]
    parsed = kline_from_rest(rest_row(bar), "BTCUSDT", "1m")
    assert (parsed.open_time, parsed.close_time, parsed.open, parsed.close, parsed.trades) == (
        bar.open_time, bar.close_time, bar.open, bar.close, bar.trades)  # fmt: skip
    assert parsed.source == "live:backfill"
    with pytest.raises(LiveDataError, match="12 fields"):
        kline_from_rest([1, 2, 3], "BTCUSDT", "1m")


T = 10 * MINUTE


@pytest.mark.parametrize(
    ("last", "bar", "closed", "expected"),
    [
        (T - MINUTE, T, True, (Action.PUBLISH, None)),  # the next bar
        (T, T, True, (Action.DUPLICATE, None)),  # the bar again (reconnect)
        (T, T - MINUTE, True, (Action.DUPLICATE, None)),  # an older bar
        (T - 4 * MINUTE, T, True, (Action.BACKFILL, (T - 3 * MINUTE, T - MINUTE))),  # hole of three
        (T - MINUTE, T, False, (Action.NOTHING, None)),  # open bar, nothing missing
        (T - 2 * MINUTE, T, False, (Action.BACKFILL, (T - MINUTE, T - MINUTE))),  # its predecessor closed unseen
        (T - 3 * MINUTE, T, False, (Action.BACKFILL, (T - 2 * MINUTE, T - MINUTE))),  # open bar reveals a hole
        (None, T, True, (Action.PUBLISH, None)),
        (None, T, False, (Action.NOTHING, None)),
    ],
)
def test_next_step(last, bar, closed, expected):
    step = next_step(last, bar, closed, MINUTE)
    assert (step.action, step.missing) == expected


def test_the_first_bar_brings_its_warm_up_history():
    step = next_step(None, T, True, MINUTE, warmup_bars=5)
    assert step.action is Action.BACKFILL and step.missing == (T - 5 * MINUTE, T - MINUTE)


def test_backfill_keeps_the_range_once_each_in_order():
    shuffled = [BARS[3], BARS[1], BARS[2], BARS[1], BARS[0], BARS[4]]
    chosen = select_backfill(shuffled, BARS[1].open_time, BARS[3].open_time)
    assert [b.open_time for b in chosen] == [BARS[1].open_time, BARS[2].open_time, BARS[3].open_time]


def test_fresh_only_when_connected_heard_from_every_symbol_and_nothing_missing():
    heard = {"BTCUSDT": 9_000, "ETHUSDT": 9_500}
    common = {"now_ms": 10_000, "symbols": ["BTCUSDT", "ETHUSDT"], "stale_after_ms": 2_000}
    assert stale_reasons(connected=True, last_heard_ms=heard, behind=[], **common) == []
    assert stale_reasons(connected=False, last_heard_ms=heard, behind=[], **common) == ["websocket disconnected"]
    assert stale_reasons(connected=True, last_heard_ms={"BTCUSDT": 9_000}, behind=[], **common) == [
        "ETHUSDT: no data yet"
    ]
    assert stale_reasons(connected=True, last_heard_ms={**heard, "BTCUSDT": 7_000}, behind=[], **common) == [
        "BTCUSDT: no data for 3.0s"
    ]
    assert stale_reasons(connected=True, last_heard_ms=heard, behind=["ETHUSDT"], **common) == [
        "ETHUSDT: bars missing, backfilling"
    ]


def test_market_data_keeps_prices_for_held_symbols_off_the_allowlist() -> None:
    from quantum_trader.services.market_data import watched_symbols

    assert watched_symbols(["BTCUSDT", "ETHUSDT"], []) == ["BTCUSDT", "ETHUSDT"]
    # a held symbol already allowed is not repeated; a held one off the allowlist is added, in a stable order
    assert watched_symbols(["BTCUSDT", "ETHUSDT"], ["SOLUSDT", "ETHUSDT", "ADAUSDT"]) == [
        "BTCUSDT",
        "ETHUSDT",
        "ADAUSDT",
        "SOLUSDT",
    ]


def test_the_stale_hold_engages_at_once_and_is_reasserted_at_most_once_a_second():
    hold = StaleHold()
    assert not hold.engaged
    written = [t for t in range(10_000, 13_000, 50) if hold.due(t)]  # market-data's 50 ms idle loop, stale for 3 s
    assert written == [10_000, 11_000, 12_000]
    assert hold.engaged


def test_a_released_hold_engages_at_once_when_the_feed_goes_stale_again():
    hold = StaleHold()
    assert hold.due(10_000)
    hold.release()
    assert not hold.engaged
    assert hold.due(10_050), "fresh, then stale again 50 ms later: held at once, not a second later"
    assert not hold.due(10_100)


def test_a_clock_stepping_back_reasserts_the_halt_rather_than_waiting():
    hold = StaleHold(reassert_ms=HALT_REASSERT_MS)
    assert hold.due(50_000)
    assert hold.due(20_000), "the wall clock went back: re-assert now, never wait for the old time to come again"
    assert not hold.due(20_500)
