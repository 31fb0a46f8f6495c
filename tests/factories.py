"""Messages for tests, built through the real contracts and published through the real bus."""

from __future__ import annotations

import redis

from quantum_trader.bus.publish import publish
from quantum_trader.bus.step import Output
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import OrderType, Plan, PlanKind, Side, Tick


def tick(symbol: str, price: float, t: int) -> Tick:
    return Tick(symbol=symbol, price=price, bid=price, ask=price, volume=1.0, event_time=t, source="synthetic:test")


def entry(symbol: str, plan_id: str, *, price: float = 100.0, notional: float = 100.0, t: int = 1_000,
          side: Side = Side.BUY, order_type: OrderType = OrderType.MARKET) -> Plan:
    stop, take = (price * 0.9, price * 1.2) if side is Side.BUY else (price * 1.1, price * 0.8)
    return Plan(symbol=symbol, plan_id=plan_id, kind=PlanKind.ENTRY, side=side, order_type=order_type,
                qty=round(notional / price, 3), source="test", time=t, price=price, stop_loss=stop, take_profit=take)


def exit_plan(symbol: str, plan_id: str, qty: float, *, price: float = 100.0, t: int = 2_000,
              side: Side = Side.SELL, order_type: OrderType = OrderType.MARKET) -> Plan:
    return Plan(symbol=symbol, plan_id=plan_id, kind=PlanKind.EXIT, side=side, order_type=order_type, qty=qty,
                reduce_only=True, reason_codes=("test_exit",), source="exit-brain", time=t, price=price)


def send(r: redis.Redis, keys: Keys, stream: str, message, id: str) -> None:
    publish(r, keys, Output(stream, message, id=id), 100_000)
