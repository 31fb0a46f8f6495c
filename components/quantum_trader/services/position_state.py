"""position-state: positions, the governor's reservations, realized PnL and portfolio heat from ``apply.result``.

Every execution result is settled in one exactly-once step (docs/EXECUTION.md, "Reservation
lifecycle"): the position hash, the release or commit of what the approval reserved, the ledger,
the heat, and the ``position.snapshot`` / ``trade.closed`` outputs are written together, or not
at all. The math is pure (``risk.positions``, ``risk.settlement``, ``risk.heat``); this module reads
state, calls it and turns the answer into guarded Redis writes.

Why the guards: two results for one symbol (or a reconciler correction) may be handled at the
same time by different replicas. The step applies only if the position's ``version`` and the
symbol's locks are still what the handler read, so the position math is always done on the state
it is written over; on a conflict the consumer re-reads and recomputes. Ledger sums are
HINCRBYFLOAT (exact under any concurrency). Portfolio heat is deliberately *not* guarded: it is
derived from every open position, and guarding it would serialize all replicas through one field
(measured: three replicas then exhaust the consumer's conflict retries and stall messages until
reclaim). With one replica it is exact after every step; with several, a step may write a heat
that misses a concurrent step on another symbol, and the periodic refresh (``HEAT_REFRESH_SECONDS``,
WATCHed, from scratch) corrects it well inside heat-gate's 60 s staleness limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from quantum_trader.bus.consumer import Delivery, Handler
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import ExecutionResult
from quantum_trader.risk.heat import PortfolioHeat, equity, portfolio_heat
from quantum_trader.risk.positions import Position, PositionFormatError
from quantum_trader.risk.settlement import PortfolioView, Settlement, settle
from quantum_trader.runtime.service import ComponentContext, Service

log = logging.getLogger(__name__)

RESULT_STREAM = "apply.result"
SNAPSHOT_STREAM = "position.snapshot"
CLOSED_STREAM = "trade.closed"
HEAT_REFRESH_SECONDS = 5.0
"""heat-gate treats heat older than 60 s (wall clock) as stale; refresh well within that"""


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _text_dict(raw: Mapping) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}  # type: ignore[misc]


def _flat(mapping: Mapping[str, str]) -> list[str]:
    flat: list[str] = []
    for name, value in mapping.items():
        flat.extend((name, value))
    return flat


@dataclass(frozen=True, slots=True)
class StateRead:
    """The state one result is settled against, plus the raw values its step's guards compare."""

    view: PortfolioView
    position_version: str | None
    """``position:<symbol>.version`` as read (None: absent), the guard's expected value"""
    heat_ok: bool
    """False when another position hash was unreadable: heat is not written (it goes stale: fail closed)"""


def read_state(client: redis.Redis, keys: Keys, symbol: str) -> StateRead:
    """Read the result's position, its locks, the ledger and every open position (for heat)."""
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.position(symbol))
        pipe.hget(keys.entry_locks, symbol)
        pipe.hget(keys.exit_locks, symbol)
        pipe.hgetall(keys.ledger_equity)
        pipe.hkeys(keys.open_positions)
        raw_position, entry_lock, exit_lock, raw_ledger, open_symbols = pipe.execute()
    position_hash = _text_dict(raw_position)
    others, heat_ok = read_positions(client, keys, [_text(s) for s in open_symbols if _text(s) != symbol])
    ledger = _text_dict(raw_ledger)
    view = PortfolioView(
        position=Position.from_hash(symbol, position_hash),
        others=others,
        entry_lock=_text(entry_lock),
        exit_lock=_text(exit_lock),
        realized_pnl=float(ledger.get("realized_pnl") or 0),
        fees=float(ledger.get("fees") or 0),
    )
    return StateRead(view, position_hash.get("version"), heat_ok)


def read_positions(client: redis.Redis, keys: Keys, symbols: list[str]) -> tuple[list[Position], bool]:
    """The positions of ``symbols``; the flag is False when one of them could not be read."""
    if not symbols:
        return [], True
    with client.pipeline(transaction=False) as pipe:
        for symbol in symbols:
            pipe.hgetall(keys.position(symbol))
        raws = pipe.execute()
    positions, ok = [], True
    for symbol, raw in zip(symbols, raws, strict=True):
        try:
            positions.append(Position.from_hash(symbol, _text_dict(raw)))
        except PositionFormatError as error:
            ok = False
            log.error("unreadable position: heat not written", extra={"symbol": symbol, "error": str(error)})
    return positions, ok


def settlement_step(
    keys: Keys,
    result: ExecutionResult,
    state: StateRead,
    settlement: Settlement,
    *,
    corr: str,
    input_id: str,
    now_ms: int,
) -> Step:
    """The guarded writes and outputs of one settled result (see docs/EXECUTION.md for each)."""
    symbol = result.symbol
    fill = settlement.fill
    step = Step()
    step.guard(keys.position(symbol), "version", state.position_version)
    step.guard(keys.entry_locks, symbol, state.view.entry_lock)
    step.guard(keys.exit_locks, symbol, state.view.exit_lock)
    if fill.changed:
        step.write("HSET", keys.position(symbol), *_flat(fill.position.to_hash()))
    if settlement.release_reservation:
        step.write("HDEL", keys.reservations, result.plan_id)
    if settlement.release_entry_lock:
        step.write("HDEL", keys.entry_locks, symbol)
    if settlement.release_exit_lock:
        step.write("HDEL", keys.exit_locks, symbol)
    if settlement.open_notional is not None:
        if settlement.open_notional > 0:
            step.write("HSET", keys.open_positions, symbol, float(settlement.open_notional))
        else:
            step.write("HDEL", keys.open_positions, symbol)
    if settlement.cooldown_from is not None:
        step.write("HSET", keys.cooldowns, symbol, settlement.cooldown_from)
    if fill.realized_pnl:
        step.write("HINCRBYFLOAT", keys.ledger_equity, "realized_pnl", float(fill.realized_pnl))
    if fill.fee:
        step.write("HINCRBYFLOAT", keys.ledger_equity, "fees", float(fill.fee))
    if settlement.trades:
        step.write("HINCRBY", keys.ledger_equity, "trades", settlement.trades)
    if settlement.wins:
        step.write("HINCRBY", keys.ledger_equity, "wins", settlement.wins)
    if state.heat_ok:
        heat_fields = settlement.heat.to_hash(now_ms)
        heat_fields["market_time"] = str(result.time)
        step.write("HSET", keys.portfolio_heat, *_flat(heat_fields))
    if fill.changed:
        step.emit(SNAPSHOT_STREAM, fill.position.snapshot(result.time), id=f"snap:{input_id}", corr=corr)
    if fill.closed is not None:
        step.emit(CLOSED_STREAM, fill.closed, id=f"trade:{fill.closed.trade_id}", corr=corr)
    return step


class PositionStateService(Service):
    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        self.starting_balance = ctx.policy.simulator.starting_balance
        self._next_refresh = 0.0

    def handlers(self) -> dict[str, Handler]:
        return {RESULT_STREAM: self.on_result}

    def start(self) -> None:
        self.refresh_heat()

    def idle(self) -> float | None:
        if time.monotonic() >= self._next_refresh:
            self.refresh_heat()
        return None

    def on_result(self, envelope: Envelope[ExecutionResult], delivery: Delivery) -> Step:
        result = envelope.message
        state = read_state(self.ctx.client, self.ctx.keys, result.symbol)
        settlement = settle(state.view, result, self.starting_balance)
        fill = settlement.fill
        if fill.ignored_qty:
            self.count("fill_qty_ignored")
            log.warning(
                "reduce-only fill beyond the position ignored",
                extra={"plan_id": result.plan_id, "symbol": result.symbol, "ignored_qty": fill.ignored_qty},
            )
        self.count(f"results_{result.status.value.lower()}")
        if fill.closed is not None:
            self.count("trades_closed")
        return settlement_step(
            self.ctx.keys,
            result,
            state,
            settlement,
            corr=envelope.corr,
            input_id=envelope.id,
            now_ms=self.ctx.now_ms(),
        )

    def refresh_heat(self) -> PortfolioHeat | None:
        """Rewrite ``portfolio:heat`` with the wall time so heat-gate keeps trusting it between trades.

        WATCHed (heat, ledger, open positions): if a settlement step changes them meanwhile, this
        round is dropped and the next one recomputes. An unreadable position leaves heat unwritten,
        so it goes stale and heat-gate holds (fail closed).
        """
        self._next_refresh = time.monotonic() + HEAT_REFRESH_SECONDS
        client, keys = self.ctx.client, self.ctx.keys
        try:
            with client.pipeline(transaction=True) as pipe:
                pipe.watch(keys.portfolio_heat, keys.ledger_equity, keys.open_positions)
                ledger = _text_dict(pipe.hgetall(keys.ledger_equity))
                symbols = [_text(s) for s in pipe.hkeys(keys.open_positions)]
                positions, ok = read_positions(client, keys, symbols)
                if not ok:
                    pipe.unwatch()
                    return None
                account = equity(
                    self.starting_balance, float(ledger.get("realized_pnl") or 0), float(ledger.get("fees") or 0)
                )
                heat = portfolio_heat(positions, account)
                pipe.multi()
                pipe.hset(keys.portfolio_heat, mapping=heat.to_hash(self.ctx.now_ms()))
                pipe.execute()
                return heat
        except redis.WatchError:
            return None
        except redis.RedisError as error:
            log.warning("heat refresh failed", extra={"error": str(error)})
            return None


def build(ctx: ComponentContext) -> Service:
    return PositionStateService(ctx)
