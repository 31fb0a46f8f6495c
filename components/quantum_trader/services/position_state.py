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
HINCRBYFLOAT (exact under any concurrency).

Portfolio heat is incremental, O(1) per result whatever the number of open positions: the
``portfolio:risk`` hash keeps each open position's risk to its stop (``symbol -> risk``) and
``portfolio:risk-total`` keeps their running sum (``open_risk``, HINCRBYFLOAT by the change) and
whether it can be trusted (``state``). A step that changes a position writes its risk entry and
adds the difference to the sum, in the same step as the position, guarded by the entry it read;
the heat it writes is ``(sum - old entry + new entry) / equity``. The sum itself is deliberately
*not* guarded: guarding it would serialize all replicas through one field (measured: three
replicas then exhaust the consumer's conflict retries and stall messages until reclaim). With one
replica the heat is exact after every step; with several, a step may write a heat that misses a
concurrent step on another symbol, and the next step (or the refresh) puts it right. Every
``HEAT_REFRESH_SECONDS`` the heat is rewritten from the running totals (O(1), WATCHed): its wall
time stays fresh for heat-gate between trades and a replica's missed concurrent step is put right.
Reading every position is the rebuild (``refresh_heat``), which rewrites entries, sum and heat from
scratch: at start, whenever the totals' ``state`` is not ``ok`` (an unreadable position; the
reconciler marks it when it corrects a position, since it writes no risk entry), and every
``HEAT_REBUILD_SECONDS`` against float drift.

Fail closed: a position hash the refresh cannot read sets ``state`` to ``unreadable:<symbol>``;
until a refresh reads every position again no step writes heat (the steps are guarded on
``state``), so heat goes stale and heat-gate holds. Before the first refresh of an instance
there is no ``state``: the handler runs the refresh first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from quantum_trader.bus.codec import text, text_dict
from quantum_trader.bus.consumer import Delivery, Handler, no_done_precheck
from quantum_trader.bus.step import Step
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import ExecutionResult
from quantum_trader.risk.heat import PortfolioHeat, equity, heat_from_totals, portfolio_heat
from quantum_trader.risk.positions import Position, PositionFormatError
from quantum_trader.risk.settlement import PortfolioView, Settlement, settle
from quantum_trader.runtime.service import ComponentContext, Service

log = logging.getLogger(__name__)

RESULT_STREAM = "apply.result"
SNAPSHOT_STREAM = "position.snapshot"
CLOSED_STREAM = "trade.closed"
HEAT_REFRESH_SECONDS = 5.0
"""heat-gate treats heat older than 60 s (wall clock) as stale; refresh well within that"""
HEAT_REBUILD_SECONDS = 300.0
"""from every position: the running sum's float drift (increments of %.17g each) stays far below this"""


def _flat(mapping: Mapping[str, str]) -> list[str]:
    flat: list[str] = []
    for name, value in mapping.items():
        flat.extend((name, value))
    return flat


RISK_OK = "ok"


@dataclass(frozen=True, slots=True)
class StateRead:
    """The state one result is settled against, plus the raw values its step's guards compare."""

    view: PortfolioView
    position_version: str | None
    """``position:<symbol>.version`` as read (None: absent), the guard's expected value"""
    heat_ok: bool
    """False when the running totals cannot be trusted (an unreadable position, or no refresh yet):
    heat is not written (it goes stale: fail closed)"""
    risk_entry: str | None = None
    """``portfolio:risk[symbol]`` as read (None: absent), the guard's expected value"""
    old_risk: float = 0.0
    """this symbol's risk as counted in the running sum"""
    totals_missing: bool = False
    """no refresh ever wrote the running totals (a new instance): the handler builds them first"""
    done: bool = False
    """the result's message is already done (read with the rest when its id is given)"""


def read_state(client: redis.Redis, keys: Keys, symbol: str, done_key: str | None = None) -> StateRead:
    """Read the result's position, its locks, the ledger and the running heat totals: one round trip, O(1).

    With ``done_key``, whether the message is already done comes back in the same round trip.

    A plain pipeline, not MULTI/EXEC: a consistent snapshot would buy nothing, since the step is
    applied later anyway. Every value the step is computed over and writes back (the position's
    version, the locks, the symbol's risk entry, the totals' state) is a guard of the step, so a
    change between these reads, or between them and the step, is a conflict and recomputed; the
    rest (ledger, the others' sum and count) is unguarded with or without a transaction.
    """
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.position(symbol))
        pipe.hget(keys.entry_locks, symbol)
        pipe.hget(keys.exit_locks, symbol)
        pipe.hgetall(keys.ledger_equity)
        pipe.hget(keys.portfolio_risk, symbol)
        pipe.hlen(keys.portfolio_risk)
        pipe.hmget(keys.portfolio_risk_total, "open_risk", "state")
        if done_key is not None:
            pipe.exists(done_key)
        replies = pipe.execute()
    raw_position, entry_lock, exit_lock, raw_ledger, raw_entry, open_count, (raw_total, raw_state) = replies[:7]
    done = bool(replies[7]) if done_key is not None else False
    position_hash = text_dict(raw_position)
    ledger = text_dict(raw_ledger)
    entry = text(raw_entry)
    heat_ok = text(raw_state) == RISK_OK and raw_total is not None
    old_risk = total = 0.0
    if heat_ok:
        try:
            total = float(raw_total)
            old_risk = float(entry) if entry is not None else 0.0
        except ValueError:
            heat_ok = False
            log.error("unreadable heat totals: heat not written", extra={"symbol": symbol, "entry": entry})
    others_open = int(open_count) - (1 if entry is not None else 0)
    view = PortfolioView(
        position=Position.from_hash(symbol, position_hash),
        others=(),
        entry_lock=text(entry_lock),
        exit_lock=text(exit_lock),
        realized_pnl=float(ledger.get("realized_pnl") or 0),
        fees=float(ledger.get("fees") or 0),
        others_risk=total - old_risk if heat_ok else 0.0,
        others_open=max(0, others_open),
    )
    return StateRead(view, position_hash.get("version"), heat_ok, entry, old_risk, raw_state is None, done)


def read_positions(client: redis.Redis, keys: Keys, symbols: list[str]) -> tuple[list[Position], str | None]:
    """The positions of ``symbols``, and the first one that could not be read (None: all were)."""
    if not symbols:
        return [], None
    with client.pipeline(transaction=False) as pipe:
        for symbol in symbols:
            pipe.hgetall(keys.position(symbol))
        raws = pipe.execute()
    positions, bad = [], None
    for symbol, raw in zip(symbols, raws, strict=True):
        try:
            positions.append(Position.from_hash(symbol, text_dict(raw)))
        except PositionFormatError as error:
            bad = bad or symbol
            log.error("unreadable position: heat not written", extra={"symbol": symbol, "error": str(error)})
    return positions, bad


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
        step.tally("HDEL", keys.reservations, result.plan_id, totals=keys.reservations_totals)
    if settlement.release_entry_lock:
        step.write("HDEL", keys.entry_locks, symbol)
    if settlement.release_exit_lock:
        step.write("HDEL", keys.exit_locks, symbol)
    if settlement.open_notional is not None:
        if settlement.open_notional > 0:
            step.tally("HSET", keys.open_positions, symbol, settlement.open_notional, totals=keys.open_positions_totals)
        else:
            step.tally("HDEL", keys.open_positions, symbol, totals=keys.open_positions_totals)
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
        # the totals must still be trusted when the step applies (a refresh may have found an
        # unreadable position meanwhile), and this symbol's entry still what the delta is taken from
        step.guard(keys.portfolio_risk_total, "state", RISK_OK)
        if fill.changed:
            step.guard(keys.portfolio_risk, symbol, state.risk_entry)
            mine = fill.position
            new_risk = mine.open_risk() if mine.is_open else 0.0
            if mine.is_open:
                step.write("HSET", keys.portfolio_risk, symbol, float(new_risk))
            elif state.risk_entry is not None:
                step.write("HDEL", keys.portfolio_risk, symbol)
            if new_risk != state.old_risk:
                step.write("HINCRBYFLOAT", keys.portfolio_risk_total, "open_risk", float(new_risk - state.old_risk))
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
        self._next_rebuild = 0.0

    def handlers(self) -> dict[str, Handler]:
        return {RESULT_STREAM: self.on_result}

    def start(self) -> None:
        self.refresh_heat()

    def idle(self) -> float | None:
        now = time.monotonic()
        if now >= self._next_rebuild:
            self.refresh_heat()
        elif now >= self._next_refresh and not self.refresh_heat_from_totals():
            self.refresh_heat()  # the totals are not trusted (or missing): rebuild them now
        return None

    @no_done_precheck  # in read_state's round trip
    def on_result(self, envelope: Envelope[ExecutionResult], delivery: Delivery) -> Step:
        result = envelope.message
        client, keys = self.ctx.client, self.ctx.keys
        done_key = keys.done(self.ctx.name, envelope.id)
        state = read_state(client, keys, result.symbol, done_key)
        if state.done:
            return Step()  # settled already: the stage script finds the done key and only acks
        if state.totals_missing:  # before the first refresh of an instance: build the totals once
            self.refresh_heat()
            state = read_state(client, keys, result.symbol, done_key)
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
        """Rebuild the heat totals and ``portfolio:heat`` from every position, from scratch.

        Also rewrites the heat's wall time so heat-gate keeps trusting it between trades. WATCHed
        (heat, totals, ledger, open positions): if a settlement step changes them meanwhile, this
        round is dropped and the next one recomputes. An unreadable position marks the totals
        untrusted, so no step writes heat until a refresh reads every position again: heat goes
        stale and heat-gate holds (fail closed).
        """
        self._next_refresh = time.monotonic() + HEAT_REFRESH_SECONDS
        self._next_rebuild = time.monotonic() + HEAT_REBUILD_SECONDS
        client, keys = self.ctx.client, self.ctx.keys
        risk, total = keys.portfolio_risk, keys.portfolio_risk_total
        try:
            with client.pipeline(transaction=True) as pipe:
                pipe.watch(keys.portfolio_heat, keys.ledger_equity, keys.open_positions, risk, total)
                ledger = text_dict(pipe.hgetall(keys.ledger_equity))
                symbols = [text(s) for s in pipe.hkeys(keys.open_positions)]
                positions, bad = read_positions(client, keys, symbols)
                if bad is not None:
                    pipe.multi()
                    pipe.hset(total, "state", f"unreadable:{bad}")
                    pipe.execute()
                    return None
                account = equity(
                    self.starting_balance, float(ledger.get("realized_pnl") or 0), float(ledger.get("fees") or 0)
                )
                entries = {p.symbol: repr(float(p.open_risk())) for p in positions if p.is_open}
                heat = portfolio_heat(positions, account)
                pipe.multi()
                pipe.delete(risk)
                if entries:
                    pipe.hset(risk, mapping=entries)
                pipe.hset(total, mapping={"open_risk": repr(heat.open_risk), "state": RISK_OK})
                pipe.hset(keys.portfolio_heat, mapping=heat.to_hash(self.ctx.now_ms()))
                pipe.execute()
                return heat
        except redis.WatchError:
            return None
        except redis.RedisError as error:
            log.warning("heat refresh failed", extra={"error": str(error)})
            return None

    def refresh_heat_from_totals(self) -> bool:
        """Rewrite ``portfolio:heat`` from the running totals and the ledger: O(1), whatever is open.

        False when the totals cannot be used (no ``state`` ok, an unreadable sum): the caller rebuilds.
        WATCHed like the rebuild, so a step that changes the totals meanwhile wins and this round is dropped.
        """
        self._next_refresh = time.monotonic() + HEAT_REFRESH_SECONDS
        client, keys = self.ctx.client, self.ctx.keys
        try:
            with client.pipeline(transaction=True) as pipe:
                pipe.watch(keys.portfolio_heat, keys.ledger_equity, keys.portfolio_risk, keys.portfolio_risk_total)
                raw_total, raw_state = pipe.hmget(keys.portfolio_risk_total, "open_risk", "state")
                if text(raw_state) != RISK_OK or raw_total is None:
                    return False
                try:
                    open_risk = float(raw_total)
                except ValueError:
                    return False
                ledger = text_dict(pipe.hgetall(keys.ledger_equity))
                count = int(pipe.hlen(keys.portfolio_risk))
                account = equity(
                    self.starting_balance, float(ledger.get("realized_pnl") or 0), float(ledger.get("fees") or 0)
                )
                heat = heat_from_totals(open_risk, count, account)
                pipe.multi()
                pipe.hset(keys.portfolio_heat, mapping=heat.to_hash(self.ctx.now_ms()))
                pipe.execute()
                return True
        except redis.WatchError:
            return True  # a step wrote heat meanwhile: it is fresh
        except redis.RedisError as error:
            log.warning("heat refresh failed", extra={"error": str(error)})
            return True  # retried at the next refresh; not a reason to read every position


def build(ctx: ComponentContext) -> Service:
    return PositionStateService(ctx)
