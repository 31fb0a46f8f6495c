"""apply-layer's per-order round trips against the simulator and a real Redis: the fee from the
account's commission rate (no userTrades per order), leverage read once, and exchange rules
published for a symbol priced after start."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from quantum_trader.bus.control import write_control
from quantum_trader.contracts.envelope import decode
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import Approval, ExecutionResult, Side
from quantum_trader.contracts.policy import PolicySpec, SimulatorSpec
from quantum_trader.exchange.client import ExchangeClient
from quantum_trader.exchange.order_ids import client_order_id
from quantum_trader.exchange.simulator.server import RunningSimulator, run_simulator_in_thread
from quantum_trader.runtime.service import ComponentContext
from quantum_trader.runtime.settings import load_settings
from quantum_trader.services import apply_layer
from tests.factories import entry, send
from tests.integration._governor_support import consumer, drain, reservation

KEY, SECRET = "fees-key-0123456789", "fees-secret-abcdefghijklmnop"
SYMBOLS = ["BTCUSDT", "ETHUSDT", "LATEUSDT"]


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    spec = SimulatorSpec(taker_fee=0.0005, slippage_bps=0, starting_balance=100_000, seed=1)
    running = run_simulator_in_thread(spec, symbols=SYMBOLS, credentials={KEY: SECRET})
    running.set_price("BTCUSDT", 60_000)
    running.set_price("ETHUSDT", 3_000)
    yield running
    running.stop()


@pytest.fixture
def client(sim: RunningSimulator) -> Iterator[ExchangeClient]:
    c = ExchangeClient(KEY, SECRET, base_url=sim.base_url, timeout=5)
    yield c
    c.close()


def test_commission_rate_and_symbol_config_endpoints(sim: RunningSimulator, client: ExchangeClient) -> None:
    rate = client.commission_rate("BTCUSDT")
    assert (rate.symbol, str(rate.taker), str(rate.maker)) == ("BTCUSDT", "0.0005", "0.0005")
    result = client.market_order("BTCUSDT", "BUY", "0.013", "fee-check-1")
    assert rate.taker_fee(result.executed_qty, result.avg_price) == client.order_fee("BTCUSDT", result.order_id)
    client.set_leverage("ETHUSDT", 7)
    assert client.leverages() == {"BTCUSDT": 20, "ETHUSDT": 7, "LATEUSDT": 20}
    with pytest.raises(Exception) as caught:
        client.commission_rate("NOPEUSDT")
    assert getattr(caught.value, "code", None) == -1121


def test_the_client_reads_its_environment_once(monkeypatch: pytest.MonkeyPatch, sim: RunningSimulator) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    c = ExchangeClient(KEY, SECRET, base_url=sim.base_url, timeout=5)
    monkeypatch.setenv("NO_PROXY", "")  # too late: the client settled its environment when it was made
    assert c.server_time() > 0
    c.close()
    live = ExchangeClient(KEY, SECRET, live=True)
    assert live._client.session.proxies.get("http") == "http://proxy.invalid:3128"
    assert live._client.session.trust_env is False
    live.close()


class Desk:
    """apply-layer in this process, with its one consumer driven by the test (no worker consumers)."""

    def __init__(
        self, redis_url: str, instance: str, r: redis.Redis, sim: RunningSimulator, request_timeout: float = 10.0
    ) -> None:
        self.r, self.sim = r, sim
        spec = PolicySpec.model_validate(
            {
                "symbols": SYMBOLS,
                "risk": {"cooldownSeconds": 0, "maxLeverage": 5},
                "simulator": {"takerFee": 0.0005},
                "exchange": {"requestTimeoutSeconds": request_timeout},
            }
        )
        settings = load_settings(
            env={
                "QT_COMPONENT": "apply-layer",
                "QT_INSTANCE": instance,
                "QT_REDIS_URL": redis_url,
                "QT_POD": "apply-layer-0",
                "QT_EXCHANGE_URL": sim.base_url,
                "BINANCE_API_KEY": KEY,
                "BINANCE_API_SECRET": SECRET,
            }
        )
        self.ctx = ComponentContext(
            settings=settings, policy=spec, client=redis.Redis.from_url(redis_url), keys=Keys(instance)
        )
        self.keys = self.ctx.keys
        write_control(r, self.keys, engaged=False)
        self.service = apply_layer.build(self.ctx)
        self.consumer = consumer(self.ctx, self.service)

    def approve(self, plan) -> None:
        now = int(time.time() * 1000)
        approval = Approval(
            approval_id=f"apr:{plan.plan_id}",
            plan=plan,
            reservation=reservation(100.0),
            approved_at=now,
            expires_at=now + 60_000,
        )
        send(self.r, self.keys, "apply.approved", approval, id=f"apr:{plan.plan_id}")

    def results(self) -> list[ExecutionResult]:
        return [decode(f, ExecutionResult).message for _, f in self.r.xrange(self.keys.stream("apply.result"))]


@pytest.fixture
def desk(
    redis_url: str, instance: str, r: redis.Redis, sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Desk]:
    monkeypatch.setenv("QT_APPLY_IN_FLIGHT", "1")
    d = Desk(redis_url, instance, r, sim)
    yield d
    d.service.close()


def test_a_batch_of_approvals_is_one_request_and_each_order_is_answered_on_its_own(
    desk: Desk, client: ExchangeClient
) -> None:
    d = desk
    d.sim.set_price("LATEUSDT", 12.5)
    for symbol in SYMBOLS:
        client.set_leverage(symbol, 1)  # the plans' leverage: nothing to set first
    d.service.start()
    sent = d.service.exchange.requests_sent
    d.approve(entry("ETHUSDT", "b-eth", price=3_000, notional=600.0))
    d.approve(entry("BTCUSDT", "b-btc-too-big", price=60_000, notional=500_000.0))  # past the margin
    d.approve(entry("LATEUSDT", "b-late", price=12.5, notional=100.0))
    drain(d.consumer)
    results = {x.plan_id: x for x in d.results()}
    assert {p: x.status.value for p, x in results.items()} == {
        "b-eth": "FILLED",
        "b-btc-too-big": "REJECTED",
        "b-late": "FILLED",
    }
    assert results["b-btc-too-big"].error_code == -2019, "that order's own refusal, the others filled"
    assert d.service.exchange.requests_sent - sent == 1, "three orders, one batchOrders request"
    assert {o["path"] for o in d.sim.orders()} == {"/fapi/v1/batchOrders"}
    assert d.service.counters["sent_in_batch"] == 2
    assert results["b-eth"].fee == pytest.approx(results["b-eth"].filled_qty * results["b-eth"].avg_price * 0.0005)
    assert not d.r.keys(d.keys.in_flight("*"))


def test_a_symbols_later_approvals_of_a_batch_wait_for_its_first(desk: Desk, client: ExchangeClient) -> None:
    """Only a symbol's first approval of a batch can go in the batch request, and only as a first delivery:
    a redelivered first one is looked up (and sent) before the symbol's next one is sent."""
    d = desk
    d.sim.set_price("LATEUSDT", 12.5)
    for symbol in SYMBOLS:
        client.set_leverage(symbol, 1)
    d.service.start()
    d.approve(entry("ETHUSDT", "o-eth-1", price=3_000, notional=600.0))
    d.approve(entry("ETHUSDT", "o-eth-2", price=3_000, notional=600.0))
    d.approve(entry("BTCUSDT", "o-btc", price=60_000, notional=600.0))
    d.approve(entry("LATEUSDT", "o-late", price=12.5, notional=100.0))
    read = d.r.xreadgroup(d.ctx.name, d.ctx.pod, {d.keys.stream("apply.approved"): ">"}, count=10)
    entries = [(entry_id, fields) for _, batch in read for entry_id, fields in batch]
    # the first ETH approval comes as a redelivery (an earlier attempt may have sent it)
    d.consumer.handle_batch("apply.approved", [(e, f, 2 if n == 0 else 1) for n, (e, f) in enumerate(entries)])
    assert [x.status.value for x in d.results()] == ["FILLED"] * 4
    log = [(o["clientOrderId"], o["path"]) for o in d.sim.orders()]
    coid = client_order_id
    assert sorted(log[:2]) == sorted(
        [(coid("o-btc"), "/fapi/v1/batchOrders"), (coid("o-late"), "/fapi/v1/batchOrders")]
    )
    assert log[2:] == [(coid("o-eth-1"), "/fapi/v1/order"), (coid("o-eth-2"), "/fapi/v1/order")], "ETH in order"


def test_a_batch_without_an_answer_is_looked_up_order_by_order_and_sent_once(
    redis_url: str, instance: str, r: redis.Redis, sim: RunningSimulator, client: ExchangeClient, monkeypatch
) -> None:
    monkeypatch.setenv("QT_APPLY_IN_FLIGHT", "1")
    d = Desk(redis_url, instance, r, sim, request_timeout=1.0)
    try:
        for symbol in ("BTCUSDT", "ETHUSDT"):
            client.set_leverage(symbol, 1)
        d.service.start()
        sim.set_faults(timeoutRate=1.0, timeoutSeconds=3.0)  # the exchange fills the batch, withholds the answer
        d.approve(entry("BTCUSDT", "w-btc", price=60_000, notional=600.0))
        d.approve(entry("ETHUSDT", "w-eth", price=3_000, notional=600.0))
        drain(d.consumer, until=lambda: len(d.results()) == 2)
        sim.set_faults()
        assert [x.status.value for x in d.results()] == ["FILLED", "FILLED"]
        accepted = [o["clientOrderId"] for o in sim.orders() if o["outcome"] == "accepted"]
        assert sorted(accepted) == sorted(client_order_id(p) for p in ("w-btc", "w-eth")), "each once, looked up"
        assert d.service.counters["batch_failed"] == 1
        assert d.service.counters["recovered_after_restart"] == 2
    finally:
        d.service.close()


def test_each_order_is_one_request_and_its_fee_is_the_exchanges(desk: Desk) -> None:
    d = desk
    d.service.start()
    assert d.service.link.leverage == {"BTCUSDT": 20, "ETHUSDT": 20, "LATEUSDT": 20}  # read once, at start
    assert set(d.service.fees.rates) == {"BTCUSDT", "ETHUSDT"}  # the tradable ones, before any order
    sent = d.service.exchange.requests_sent
    for i in range(3):
        d.approve(
            entry(
                "BTCUSDT" if i % 2 == 0 else "ETHUSDT", f"p{i}", price=60_000 if i % 2 == 0 else 3_000, notional=600.0
            )
        )
    drain(d.consumer)
    results = d.results()
    assert [x.status.value for x in results] == ["FILLED"] * 3
    # leverage 1 differs from the account's 20: set once per symbol, then remembered; no userTrades
    assert d.service.exchange.requests_sent - sent == 3 + 2
    paid = float(d.sim.state()["feesPaid"])
    assert sum(x.fee for x in results) == pytest.approx(paid, abs=1e-12)
    assert all(x.fee == pytest.approx(x.filled_qty * x.avg_price * 0.0005) for x in results)
    assert not d.r.keys(d.keys.in_flight("*"))


def test_a_symbol_priced_after_start_becomes_tradable(desk: Desk) -> None:
    d = desk
    d.service.start()
    published = d.r.hgetall(d.keys.exchange_filters)
    assert set(published) == {"BTCUSDT", "ETHUSDT"}
    d.sim.set_price("LATEUSDT", 12.5)
    d.service.idle()  # not due yet
    assert "LATEUSDT" not in d.r.hgetall(d.keys.exchange_filters)
    d.service.link.next_filters = 0.0  # the periodic look, due
    d.service.idle()
    late = json.loads(d.r.hget(d.keys.exchange_filters, "LATEUSDT"))
    assert late["symbol"] == "LATEUSDT" and late["filters"]
    assert "LATEUSDT" in d.service.fees.rates  # and its commission rate read behind it
    d.approve(entry("LATEUSDT", "late-1", price=12.5, notional=100.0, side=Side.BUY))
    drain(d.consumer)
    assert [x.status.value for x in d.results()] == ["FILLED"]


def test_a_redelivered_approval_already_done_sends_nothing(desk: Desk) -> None:
    d = desk
    d.service.start()
    d.approve(entry("BTCUSDT", "once", price=60_000, notional=600.0))
    drain(d.consumer)
    entry_id = d.r.xrange(d.keys.stream("apply.approved"))[0][0]
    fields = d.r.xrange(d.keys.stream("apply.approved"))[0][1]
    sent = d.service.exchange.requests_sent
    d.consumer.handle_entry("apply.approved", entry_id, fields, deliveries=1)  # as if the ack was lost
    other = consumer(d.ctx, d.service, name="apply-layer-1")
    other.handle_batch("apply.approved", [(entry_id, fields, 1)])  # and another replica's stale batch
    assert d.service.exchange.requests_sent == sent
    assert [o["clientOrderId"] for o in d.sim.orders()].count("qt-once") <= 1
    assert len(d.results()) == 1 and len(d.sim.orders()) == 1
    assert not d.r.keys(d.keys.in_flight("*"))
