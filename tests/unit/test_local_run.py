"""The pure parts of `qt run`: the closing summary from a ledger, the status table's states and idle
reasons, how a process ended, the replay options in the policy's own fields, the flag types, digests."""

from __future__ import annotations

from dataclasses import replace

import click
import pytest

from quantum_trader.bus.control import parse_control
from quantum_trader.cli import HttpUrl, RedisUrl, Speed
from quantum_trader.contracts.heartbeat import HeartbeatRecord
from quantum_trader.contracts.policy import MarketDataSource, PolicySpec
from quantum_trader.data.errors import DataError
from quantum_trader.local.app import apply_run_options, replay_without_allowed_symbols, with_process_states
from quantum_trader.local.digest import DigestError, pick_repo_digest, tree_digest
from quantum_trader.local.ledger import Crash, RunLedger, ledger_figure, reached_exchange, render_summary, summarize
from quantum_trader.local.status import Observed, build_status, idle_reason, render_text
from quantum_trader.local.supervisor import (
    ORDER_LOG_FILE,
    Supervisor,
    describe_exit,
    describe_stop,
    inherited_environment,
)


def result(plan: str, status: str, reason: str = "", code: int | None = None) -> dict:
    return {"plan_id": plan, "status": status, "reason": reason, "error_code": code}


def ledger(**changes) -> RunLedger:
    base = RunLedger(
        started_at=1000.0,
        ended_at=1100.0,
        bars=5000,
        intents=12,
        results=[
            result("p1", "FILLED"),
            result("p2", "FILLED"),
            result("p3", "REJECTED", "ReduceOnly Order is rejected.", -2022),
            result("p4", "REJECTED", "approval_expired"),
            result("p5", "ERROR", "order status NEW"),
        ],
        decisions_rejected=[{"reasons": ["cooldown"]}, {"reasons": ["cooldown", "max_open_positions"]}],
        ledger={"realized_pnl": "30.5", "fees": "1.25", "trades": "1", "wins": "1"},
        open_positions=["ETHUSDT", "BTCUSDT"],
        starting_equity=10_000.0,
        workdir="/state/run",
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def test_the_summary_counts_what_the_ledger_holds():
    summary = summarize(ledger())
    assert (summary.orders, summary.fills) == (4, 2)  # the refused-before-sending one never reached the exchange
    assert summary.rejections == {
        "governor: cooldown": 2,
        "apply-layer: approval_expired": 1,
        "exchange: ReduceOnly Order is rejected.": 1,
        "governor: max_open_positions": 1,
    }
    assert summary.bars_per_second == 50.0 and summary.run_seconds == 100.0
    assert summary.net_pnl == pytest.approx(29.25) and summary.equity == pytest.approx(10_029.25)
    assert summary.open_positions == ["BTCUSDT", "ETHUSDT"]


def test_the_summary_text_has_every_figure_and_where_things_are():
    text = render_summary(ledger(crashes=[Crash("features-0", "crashed (SIGKILL)", 65.0)]), summarize(ledger()))
    assert text.splitlines()[0] == "qt: run summary (stopped in order)"
    for fragment in (
        "run time    1m 40s",
        "5,000 (50.0 bars/s)",
        "4 sent, 2 filled",
        "2 governor: cooldown; 1 apply-layer: approval_expired",
        "2 open (BTCUSDT, ETHUSDT)",
        "+29.25 USDT after 1.25 fees (realized +30.50); equity 10,029.25",
        "/state/run/ledger.json",
    ):
        assert fragment in text, fragment
    assert "crashes" not in text  # summarize() of a ledger without crashes
    with_crash = ledger(crashes=[Crash("features-0", "crashed (SIGKILL)", 65.0)])
    assert "features-0 crashed (SIGKILL) at 1m 05s" in render_summary(with_crash, summarize(with_crash))
    assert "(forced stop)" in render_summary(with_crash, summarize(with_crash), forced=True)


def test_an_empty_run_summarizes_to_zeros():
    empty = ledger(results=[], decisions_rejected=[], ledger={}, open_positions=[], bars=0, ended_at=1000.0)
    summary = summarize(empty)
    assert (summary.orders, summary.fills, summary.bars_per_second, summary.net_pnl) == (0, 0, 0.0, 0.0)
    assert "rejections  none" in render_summary(empty, summary)
    incomplete = ledger(error="Redis went away")
    assert "incomplete  Redis went away" in render_summary(incomplete, summarize(incomplete))


@pytest.mark.parametrize(
    ("entry", "sent"),
    [
        (result("a", "FILLED"), True),
        (result("a", "ERROR"), True),
        (result("a", "REJECTED", "Margin is insufficient.", -2019), True),
        (result("a", "REJECTED", "killswitch_all"), False),
        (result("a", "SKIPPED"), False),
    ],
)
def test_which_results_reached_the_exchange(entry, sent):
    assert reached_exchange(entry) is sent


@pytest.mark.parametrize(
    ("code", "text"), [(-9, "crashed (SIGKILL)"), (-11, "crashed (SIGSEGV)"), (1, "exited (1)"), (0, "exited (0)")]
)
def test_how_a_process_ended(code, text):
    assert describe_exit(code) == text


@pytest.mark.parametrize(
    ("code", "forced", "timed_out_after", "text"),
    [
        (0, False, None, "stopped"),
        (-15, False, None, "stopped (while starting)"),
        (-9, True, None, "killed (forced stop)"),
        (-9, False, 15.0, "killed (not stopped within 15s)"),
        (-9, False, None, "crashed (SIGKILL)"),  # a SIGKILL the stop did not send
        (1, True, None, "exited (1)"),
    ],
)
def test_how_a_process_ended_on_a_stop(code, forced, timed_out_after, text):
    assert describe_stop(code, forced=forced, timed_out_after=timed_out_after) == text


def test_each_run_starts_a_fresh_exchange_order_log(tmp_path):
    """The simulator appends to its order log; a run's log must not hold the orders of the runs before it."""
    supervisor = Supervisor(PolicySpec(), "redis://127.0.0.1:1/0", workdir=tmp_path)
    (tmp_path / ORDER_LOG_FILE).write_text('{"seq": 1, "outcome": "accepted"}\n')
    assert supervisor.fresh_order_log() == tmp_path / ORDER_LOG_FILE
    assert (tmp_path / ORDER_LOG_FILE).read_bytes() == b""


def beat(component: str, processed: int = 0, **counters) -> HeartbeatRecord:
    return HeartbeatRecord(
        component=component,
        pod=f"{component}-0",
        time_ms=10_000,
        started_ms=0,
        state="running",
        code_version="x",
        image_digest="",
        model_digest="",
        control_generation=1,
        counters={"processed": processed, **counters},
        groups={},
    )


def observed(beats, processes=None, positions=None) -> Observed:
    return Observed(
        now_ms=10_500,
        components=[b.component for b in beats] or ["features"],
        heartbeats=beats,
        ledger={},
        open_positions=positions or {},
        control=parse_control({}),
        starting_equity=1.0,
        processes=processes or {},
    )


def test_a_crashed_process_is_never_shown_running():
    status = build_status(observed([beat("features", 10)], {"features": ("crashed (SIGKILL)", 1, "crashed (SIGKILL)")}))
    assert status.rows[0].state == "crashed (SIGKILL)"
    restarted = build_status(observed([beat("features", 10)], {"features": ("running", 1, "crashed (SIGKILL)")}))
    assert restarted.rows[0].state == "running" and "restarted after crashed (SIGKILL)" in restarted.rows[0].detail
    no_beat = build_status(observed([], {"features": ("exited (1)", 2, "exited (1)")}))
    assert no_beat.rows[0].state == "exited (1)"
    # the closing table: the restart stopped in order, and the crash before it is still named
    stopped = build_status(observed([beat("features", 10)], {"features": ("stopped", 1, "crashed (SIGKILL)")}))
    assert stopped.rows[0].state == "stopped" and stopped.rows[0].detail == "restarted after crashed (SIGKILL)"


@pytest.mark.parametrize(
    ("component", "processed", "positions", "counters", "reason"),
    [
        ("heat-gate", 0, 0, {}, "idle: no open positions"),
        ("exit-brain", 900, 0, {}, "idle: no open positions"),
        ("heat-gate", 0, 2, {}, "idle: nothing on harvest.proposal yet"),
        ("governor", 0, 0, {}, "idle: nothing on apply.plan yet"),
        ("governor", 3, 0, {}, ""),
        ("market-data", 500, 0, {"finished": 1, "published": 500}, "finished: 500 ticks published"),
        ("market-data", 500, 0, {}, ""),
        ("reconciler", 0, 0, {}, ""),
        # the simulator reads ticks but counts orders: before the first order it waits for one, not for ticks
        ("exchange-sim", 0, 0, {}, "idle: no orders yet"),
        ("exchange-sim", 4, 1, {}, ""),
    ],
)
def test_an_idle_component_says_why(component, processed, positions, counters, reason):
    assert idle_reason(component, processed, 0, positions, counters) == reason


@pytest.mark.parametrize(
    ("raw", "figure"),
    [("12.5", 12.5), ("", 0.0), (None, 0.0), ("lots", 0.0), ("nan", 0.0), ("inf", 0.0), ("-inf", 0.0), ("-3", -3.0)],
)
def test_a_ledger_figure_is_a_finite_number_or_zero(raw, figure):
    assert ledger_figure({} if raw is None else {"fees": raw}, "fees") == figure


def test_a_ledger_hash_holding_an_infinity_still_gives_a_table_and_a_summary():
    status = build_status(replace(observed([beat("features")]), ledger={"trades": "inf", "wins": "nan", "fees": "1"}))
    assert (status.summary.trades, status.summary.wins, status.summary.fees) == (0, 0, 1.0)
    assert summarize(ledger(ledger={"realized_pnl": "inf", "fees": "nan"})).equity == 10_000.0


def test_components_get_the_market_data_and_in_flight_settings_of_the_caller_and_no_other_qt_setting():
    caller = {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "QT_MARKET_STREAM_URL": "ws://127.0.0.1:9000",
        "QT_MARKET_REST_URL": "http://127.0.0.1:9001",
        "QT_MARKET_STALE_SECONDS": "3",
        "QT_APPLY_IN_FLIGHT": "2",
        "QT_INSTANCE": "another-stack",
        "QT_REDIS_URL": "redis://elsewhere:6379/0",
    }
    assert inherited_environment(caller) == {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "QT_MARKET_STREAM_URL": "ws://127.0.0.1:9000",
        "QT_MARKET_REST_URL": "http://127.0.0.1:9001",
        "QT_MARKET_STALE_SECONDS": "3",
        "QT_APPLY_IN_FLIGHT": "2",
    }


def test_the_idle_reason_is_in_the_table():
    status = build_status(observed([beat("heat-gate")]))
    assert status.rows[0].detail == "idle: no open positions"


def test_the_final_table_keeps_the_counts_and_takes_the_end_states():
    status = build_status(observed([beat("features", 42)]))
    final = with_process_states(status, {"features": ("stopped", 0, "")})
    assert (final.rows[0].state, final.rows[0].processed) == ("stopped", 42)


def kline(folder, name):
    path = folder / name
    path.write_text("1704067200000,1,1,1,1,1,1704070799999,0,0,0,0,0\n")
    return path


def test_data_and_speed_go_into_the_policys_own_fields(tmp_path):
    eth = kline(tmp_path, "ETHUSDT-1h-2024-01.csv")
    kline(tmp_path, "SOLUSDT-1h-2024-01.csv")
    policy = apply_run_options(PolicySpec(), [str(tmp_path / "*USDT-1h-*.csv")], 0.0)
    assert policy.market_data.source is MarketDataSource.REPLAY
    assert policy.market_data.files == [str(eth), str(tmp_path / "SOLUSDT-1h-2024-01.csv")]
    assert policy.market_data.speed == 0.0 and policy.symbols == ["ETHUSDT", "SOLUSDT"]
    # max: each bar once the last one's consequences are done, so fills are at the prices the strategy saw
    assert policy.market_data.lockstep
    untouched = PolicySpec()
    assert apply_run_options(untouched, [], None) is untouched
    assert apply_run_options(untouched, [], 60.0).market_data.speed == 60.0
    assert not apply_run_options(untouched, [], 60.0).market_data.lockstep


def test_a_replay_whose_symbols_are_all_off_the_allowlist_is_a_mistake(tmp_path):
    kline(tmp_path, "BTCUSD-1h-2024-01.csv")
    kline(tmp_path, "ETHUSDT-1h-2024-01.csv")

    def replaying(files, symbols):
        return PolicySpec.model_validate(
            {"symbols": symbols, "marketData": {"source": "replay", "files": [str(tmp_path / f) for f in files]}}
        )

    problem = replay_without_allowed_symbols(replaying(["BTCUSD-1h-2024-01.csv"], ["BTCUSDT", "ETHUSDT"]))
    assert problem is not None and "BTCUSD" in problem and "nothing would trade" in problem
    assert replay_without_allowed_symbols(replaying(["*-1h-2024-01.csv"], ["ETHUSDT"])) is None  # one is enough
    assert replay_without_allowed_symbols(replaying(["missing-file.csv"], ["ETHUSDT"])) is None  # market-data's
    assert replay_without_allowed_symbols(PolicySpec()) is None  # no files yet: the sample is resolved later


def test_speed_has_no_meaning_for_live_market_data(tmp_path):
    from quantum_trader.contracts.policy import PolicyError

    live = PolicySpec.model_validate({"marketData": {"source": "live"}})
    with pytest.raises(PolicyError, match="--speed paces a replay"):
        apply_run_options(live, [], 10.0)
    replayed = apply_run_options(live, [str(kline(tmp_path, "ETHUSDT-1h-2024-01.csv"))], 10.0)
    assert replayed.market_data.source is MarketDataSource.REPLAY and replayed.market_data.speed == 10.0


def test_data_refuses_two_files_of_one_symbol_and_unmatched_patterns(tmp_path):
    kline(tmp_path, "ETHUSDT-1h-2024-01.csv")
    kline(tmp_path, "ETHUSDT-1m-2024-01.csv")
    with pytest.raises(DataError, match="--data: two files for ETHUSDT"):
        apply_run_options(PolicySpec(), [str(tmp_path / "ETHUSDT-*.csv")], None)
    with pytest.raises(DataError, match="--data: no kline file matches"):
        apply_run_options(PolicySpec(), [str(tmp_path / "nothing.csv")], None)


@pytest.mark.parametrize(("text", "speed"), [("max", 0.0), ("MAX", 0.0), ("1", 1.0), ("28800", 28800.0)])
def test_speed_values(text, speed):
    assert Speed().convert(text, None, None) == speed


@pytest.mark.parametrize("text", ["0", "-1", "inf", "nan", "fast", ""])
def test_bad_speeds(text):
    with pytest.raises(click.BadParameter):
        Speed().convert(text, None, None)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380", "unix:///tmp/redis.sock"])
def test_redis_urls(url):
    assert RedisUrl().convert(url, None, None) == url


@pytest.mark.parametrize(
    "url", ["notaurl", "localhost:6379", "http://h:1", "redis://", "redis://h:99999", "redis://h:0"]
)
def test_bad_redis_urls(url):
    with pytest.raises(click.BadParameter):
        RedisUrl().convert(url, None, None)


def test_http_urls():
    assert HttpUrl(allow_empty=True).convert("", None, None) == ""
    with pytest.raises(click.BadParameter):
        HttpUrl().convert("", None, None)
    with pytest.raises(click.BadParameter):
        HttpUrl().convert("ftp://x", None, None)


def test_repo_digest_of_the_images_own_repository():
    digests = ["mirror.example/qt@sha256:" + "a" * 64, "localhost:5001/quantum-trader@sha256:" + "b" * 64]
    assert pick_repo_digest("localhost:5001/quantum-trader:dev", digests) == digests[1]
    assert pick_repo_digest("other:dev", digests) == digests[0]
    with pytest.raises(DigestError, match="push it"):
        pick_repo_digest("localhost:5001/quantum-trader:dev", [])


def test_tree_digest_depends_on_content_and_path_not_order():
    files = [("a.py", b"1"), ("b.py", b"2")]
    assert tree_digest(files) == tree_digest(list(reversed(files)))
    assert tree_digest(files) != tree_digest([("a.py", b"1"), ("b.py", b"3")])
    assert tree_digest(files) != tree_digest([("a.py", b"1"), ("c.py", b"2")])
    assert tree_digest([]).startswith("sha256:") and len(tree_digest([])) == 71


def test_the_stop_order_runs_against_the_stream_graph():
    from quantum_trader.contracts.registry import COMPONENTS
    from quantum_trader.local.supervisor import START_ORDER, stop_stages

    stages = stop_stages(list(START_ORDER))
    stage_of = {name: index for index, stage in enumerate(stages) for name in stage}
    assert sorted(stage_of) == sorted(COMPONENTS)
    assert stages[0] == ["market-data", "reconciler"] and stages[-1] == ["exchange-sim"]
    assert stage_of["governor"] < stage_of["apply-layer"] < stage_of["position-state"] < stage_of["exchange-sim"]
    # a component stops after every producer of its inputs, but for the exits' feedback into the executor path
    feedback = {"position.snapshot"}
    for name, spec in COMPONENTS.items():
        for other, producer in COMPONENTS.items():
            fed = set(spec.inputs) & set(producer.outputs) - feedback
            if fed and other != name:
                assert stage_of[other] < stage_of[name], (other, name, fed)


def test_the_stop_order_of_a_partial_stack_keeps_its_relative_order():
    from quantum_trader.local.supervisor import stop_stages

    assert stop_stages(["governor", "apply-layer", "position-state"]) == [
        ["governor"],
        ["apply-layer"],
        ["position-state"],
    ]
    assert stop_stages([]) == []


@pytest.mark.parametrize(
    ("codes", "outcome"),
    [
        ({"a-0": 0, "b-0": 0}, "all exited 0"),
        ({"a-0": 0, "b-0": -15}, "b-0 stopped while still starting"),
        ({"a-0": 1, "b-0": -9}, "not clean: a-0 exited (1), b-0 crashed (SIGKILL)"),
        ({"a-0": 1, "b-0": -15}, "not clean: a-0 exited (1); b-0 stopped while still starting"),
    ],
)
def test_how_a_stop_went(codes, outcome):
    from quantum_trader.local.app import stop_outcome

    assert stop_outcome(codes, {pod: describe_stop(code) for pod, code in codes.items()}) == outcome


def test_how_a_forced_stop_went():
    from quantum_trader.local.app import stop_outcome

    codes = {"a-0": 0, "b-0": -9, "c-0": -9, "d-0": 1}
    states = {pod: describe_stop(code, forced=True) for pod, code in codes.items()}
    assert stop_outcome(codes, states) == "killed by the forced stop: b-0, c-0; not clean: d-0 exited (1)"


def test_the_text_table_fits_the_longest_state():
    status = build_status(observed([beat("features", 7), beat("governor", 3)]))
    final = with_process_states(status, {"features": ("killed (forced stop)", 0, ""), "governor": ("stopped", 0, "")})
    header, *rows, _caption = render_text(final).splitlines()
    processed_ends = header.index("processed") + len("processed")
    for row, processed in zip(rows, ("7", "3"), strict=True):
        # the counts stay under their heading however long a state is
        assert row[processed_ends - 1] == processed and row[processed_ends - 2] == " ", (header, row)
