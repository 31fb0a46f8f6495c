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

Batches: the results of one read of the stream are settled together (``settle_batch``, the bus's
:class:`Prepared` hook), in two round trips for the whole batch instead of two per result. One
pipeline reads what the batch's results are settled on (every symbol's position, locks and risk
entry, the ledger and the totals, every message's done key); the settlement math runs in memory,
each result on the state the batch's earlier ones leave (:class:`BatchBook`: two results for one
symbol are applied in order, the second on the position the first produced); and the steps go in one
script (``services/step_batch.py``) that runs each as the bus's stage step, in order, and stops at the
first one that does not apply. So every step applied was computed on exactly the state it is applied
to: its first guards are checked against what was read, as one result alone, and the later ones are
implied by the earlier steps of the same atomic script. A result the script did not settle (a conflict,
a step after it, one whose position cannot be read, a redelivered entry) is settled on its own by
``on_result``, with the re-read and recompute above. Inside one script nobody sees the heat between two
steps, so only the batch's last step writes it; a batch that stopped early has it rewritten from the
totals at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from quantum_trader.bus.codec import text, text_dict
from quantum_trader.bus.consumer import Delivery, Handler, Prepared, no_done_precheck
from quantum_trader.bus.step import Step, StepOutcome, StepRunner
from quantum_trader.contracts.envelope import Envelope
from quantum_trader.contracts.keys import Keys
from quantum_trader.contracts.messages import ExecutionResult
from quantum_trader.risk.heat import PortfolioHeat, equity, heat_from_totals, portfolio_heat
from quantum_trader.risk.positions import Position, PositionFormatError
from quantum_trader.risk.settlement import PortfolioView, Settlement, settle
from quantum_trader.runtime.service import ComponentContext, Service
from quantum_trader.services.step_batch import BatchOutcome, BatchStep, StepBatch

log = logging.getLogger(__name__)

RESULT_STREAM = "apply.result"
SNAPSHOT_STREAM = "position.snapshot"
CLOSED_STREAM = "trade.closed"
HEAT_REFRESH_SECONDS = 5.0
"""heat-gate treats heat older than 60 s (wall clock) as stale; refresh well within that"""
SMALLEST_BATCH = 2
"""fewer results than this are settled one by one: the batch's read and script are two round trips of
their own, where one result alone costs one (its step is sent with the consumer's next stream read)"""
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
    book = BatchBook.from_replies(
        {symbol: (raw_position, entry_lock, exit_lock, raw_entry)}, raw_ledger, open_count, raw_total, raw_state
    )
    return book.state(symbol, done=bool(replies[7]) if done_key is not None else False)


def read_batch(
    client: redis.Redis, keys: Keys, symbols: list[str], done_keys: list[str]
) -> tuple[BatchBook, list[bool]]:
    """What :func:`read_state` reads, for every symbol of a batch and whether each message is done: one round trip.

    The locks and risk entries of every symbol come in one HMGET each, so the read costs one
    HGETALL per symbol and one EXISTS per message, plus five commands for the batch.
    """
    with client.pipeline(transaction=False) as pipe:
        for symbol in symbols:
            pipe.hgetall(keys.position(symbol))
        pipe.hmget(keys.entry_locks, symbols)
        pipe.hmget(keys.exit_locks, symbols)
        pipe.hmget(keys.portfolio_risk, symbols)
        pipe.hgetall(keys.ledger_equity)
        pipe.hlen(keys.portfolio_risk)
        pipe.hmget(keys.portfolio_risk_total, "open_risk", "state")
        for done_key in done_keys:
            pipe.exists(done_key)
        replies = pipe.execute()
    n = len(symbols)
    entry_locks, exit_locks, raw_entries, raw_ledger, open_count, (raw_total, raw_state) = replies[n : n + 6]
    raws = {symbol: (replies[i], entry_locks[i], exit_locks[i], raw_entries[i]) for i, symbol in enumerate(symbols)}
    book = BatchBook.from_replies(raws, raw_ledger, open_count, raw_total, raw_state)
    return book, [bool(found) for found in replies[n + 6 :]]


@dataclass(slots=True)
class _SymbolState:
    """One symbol's part of a :class:`BatchBook`: what its next result is settled on."""

    position: Position | PositionFormatError
    """the position, or why its hash cannot be read (its results are then handled on their own, and fail)"""
    version: str | None
    entry_lock: str | None
    exit_lock: str | None
    risk_entry: str | None
    risk_readable: bool


@dataclass(slots=True)
class BatchBook:
    """The state a batch of results is settled on: read once, then moved in memory by each settlement (pure).

    ``state(symbol)`` is what :func:`read_state` would read right after the batch's earlier steps
    applied (the step script applies them in order and stops at the first that does not, see
    ``services/step_batch.py``); ``advance`` moves the book by exactly what ``settlement_step`` writes.
    """

    symbols: dict[str, _SymbolState]
    heat_ok: bool
    totals_missing: bool
    open_risk: float
    """the running sum of every open position's risk (``portfolio:risk-total.open_risk``)"""
    risk_entries: int
    """how many positions the sum counts (``HLEN portfolio:risk``)"""
    realized_pnl: float
    fees: float

    @classmethod
    def from_replies(
        cls,
        raws: Mapping[str, tuple[Mapping, object, object, object]],
        raw_ledger: Mapping,
        open_count: int,
        raw_total: object,
        raw_state: object,
    ) -> BatchBook:
        """From the replies of a read: per symbol (position hash, entry lock, exit lock, risk entry)."""
        ledger = text_dict(raw_ledger)
        heat_ok = text(raw_state) == RISK_OK and raw_total is not None
        total = 0.0
        if heat_ok:
            try:
                total = float(raw_total)  # type: ignore[arg-type]
            except ValueError:
                heat_ok = False
                log.error("unreadable heat totals: heat not written", extra={"total": text(raw_total)})
        symbols = {}
        for symbol, (raw_position, entry_lock, exit_lock, raw_entry) in raws.items():
            position_hash = text_dict(raw_position)
            position: Position | PositionFormatError
            try:
                position = Position.from_hash(symbol, position_hash)
            except PositionFormatError as error:
                position = error
            entry = text(raw_entry)
            readable = True
            if heat_ok and entry is not None:
                try:
                    float(entry)
                except ValueError:
                    readable = False
                    log.error("unreadable heat totals: heat not written", extra={"symbol": symbol, "entry": entry})
            symbols[symbol] = _SymbolState(
                position, position_hash.get("version"), text(entry_lock), text(exit_lock), entry, readable
            )
        return cls(
            symbols,
            heat_ok=heat_ok,
            totals_missing=raw_state is None,
            open_risk=total,
            risk_entries=int(open_count),
            realized_pnl=float(ledger.get("realized_pnl") or 0),
            fees=float(ledger.get("fees") or 0),
        )

    def readable(self, symbol: str) -> bool:
        return not isinstance(self.symbols[symbol].position, PositionFormatError)

    def state(self, symbol: str, *, done: bool = False) -> StateRead:
        """What the symbol's next result is settled on (raises PositionFormatError for an unreadable hash)."""
        mine = self.symbols[symbol]
        if isinstance(mine.position, PositionFormatError):
            raise mine.position
        heat_ok = self.heat_ok and mine.risk_readable
        old_risk = float(mine.risk_entry) if heat_ok and mine.risk_entry is not None else 0.0
        view = PortfolioView(
            position=mine.position,
            others=(),
            entry_lock=mine.entry_lock,
            exit_lock=mine.exit_lock,
            realized_pnl=self.realized_pnl,
            fees=self.fees,
            others_risk=self.open_risk - old_risk if heat_ok else 0.0,
            others_open=max(0, self.risk_entries - (1 if mine.risk_entry is not None else 0)),
        )
        return StateRead(view, mine.version, heat_ok, mine.risk_entry, old_risk, self.totals_missing, done)

    def advance(self, symbol: str, state: StateRead, settlement: Settlement) -> None:
        """The book after ``settlement_step(state, settlement)`` applied: its writes, mirrored."""
        mine = self.symbols[symbol]
        fill = settlement.fill
        if fill.changed:
            mine.position = fill.position
            mine.version = str(fill.position.version)
        if settlement.release_entry_lock:
            mine.entry_lock = None
        if settlement.release_exit_lock:
            mine.exit_lock = None
        self.realized_pnl += float(fill.realized_pnl)
        self.fees += float(fill.fee)
        if state.heat_ok and fill.changed:
            position = fill.position
            new_risk = position.open_risk() if position.is_open else 0.0
            if position.is_open:
                self.risk_entries += 1 if mine.risk_entry is None else 0
                mine.risk_entry = repr(float(new_risk))
            elif mine.risk_entry is not None:
                self.risk_entries -= 1
                mine.risk_entry = None
            if new_risk != state.old_risk:
                self.open_risk += float(new_risk - state.old_risk)


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


@dataclass(frozen=True, slots=True)
class _Settled:
    """What the batch script did with one result of the batch (``on_result`` reports it)."""

    message_id: str
    outcome: StepOutcome
    settlement: Settlement | None
    """None for a message that was done already"""


class PositionStateService(Service):
    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        self.starting_balance = ctx.policy.simulator.starting_balance
        self._next_refresh = 0.0
        self._next_rebuild = 0.0
        streams = ctx.policy.streams
        runner = StepRunner(ctx.client, ctx.keys, ctx.name, streams.max_len, streams.done_ttl_seconds)
        self._batch_script = StepBatch(ctx.client, runner)
        self._settled: dict[str, _Settled] = {}
        """entry id -> what the current batch's script did with it (``settle_batch``)"""

    def handlers(self) -> dict[str, Handler]:
        return {RESULT_STREAM: Prepared(self.on_result, self.settle_batch)}

    def start(self) -> None:
        self.refresh_heat()

    def idle(self) -> float | None:
        now = time.monotonic()
        if now >= self._next_rebuild:
            self.refresh_heat()
        elif now >= self._next_refresh and not self.refresh_heat_from_totals():
            self.refresh_heat()  # the totals are not trusted (or missing): rebuild them now
        return None

    def settle_batch(self, envelopes: list[Envelope[ExecutionResult]], deliveries: list[Delivery]) -> None:
        """Settle the batch's results with one read and one script (``on_result`` then reports each).

        The read takes every symbol's state at once; each result is settled on the state the
        results before it leave (:class:`BatchBook`), and the steps go in one script that stops at
        the first one that does not apply (``services/step_batch.py``): a result it did not settle
        is settled by ``on_result`` on its own, as before batches. A guard that an earlier step of
        the batch checked already is left out (nothing else runs in between and the book knows what
        that step wrote), and only the batch's last step writes the heat (nobody sees the heat
        between two steps of one script).
        """
        self._settled = {}
        if len(envelopes) < SMALLEST_BATCH:
            return  # on_result alone costs its read, and its step goes with the consumer's next read
        client, keys = self.ctx.client, self.ctx.keys
        # only a redelivered entry is likely done already; a first delivery that is (a result sent
        # twice) makes the script stop at it, and what follows it is settled on its own
        redelivered = [i for i, d in enumerate(deliveries) if d.deliveries > 1]
        done_keys = [keys.done(self.ctx.name, envelopes[i].id) for i in redelivered]
        symbols = sorted({e.message.symbol for e in envelopes})
        book, found = read_batch(client, keys, symbols, done_keys)
        if book.totals_missing:  # before the first refresh of an instance: build the totals once
            self.refresh_heat()
            book, found = read_batch(client, keys, symbols, done_keys)
        done = [False] * len(envelopes)
        for index, already_done in zip(redelivered, found, strict=True):
            done[index] = already_done
        now_ms = self.ctx.now_ms()
        planned: list[tuple[Envelope[ExecutionResult], Delivery, Settlement | None, BatchStep]] = []
        seen: set[str] = set()
        for envelope, delivery, already_done in zip(envelopes, deliveries, done, strict=True):
            symbol = envelope.message.symbol
            if envelope.id in seen or not book.readable(symbol):
                continue  # a repeat is checked on its own; an unreadable position fails on its own
            seen.add(envelope.id)
            if already_done:
                planned.append((envelope, delivery, None, self._batch_step(Step(), envelope, delivery, done=True)))
                continue
            state = book.state(symbol)
            settlement = settle(state.view, envelope.message, self.starting_balance)
            step = settlement_step(
                keys, envelope.message, state, settlement, corr=envelope.corr, input_id=envelope.id, now_ms=now_ms
            )
            book.advance(symbol, state, settlement)
            planned.append((envelope, delivery, settlement, self._batch_step(step, envelope, delivery)))
        _drop_repeated_guards([p[3].step for p in planned])
        _heat_in_last_step_only([p[3].step for p in planned], keys.portfolio_heat)
        outcomes = self._batch_script.run([p[3] for p in planned])
        for (envelope, delivery, settlement, _), outcome in zip(planned, outcomes, strict=True):
            if outcome.step_outcome is not None:
                self._settled[delivery.entry_id] = _Settled(envelope.id, outcome.step_outcome, settlement)
            elif outcome is BatchOutcome.FAILED:
                log.warning("batched step failed: settled on its own", extra={"msg_id": envelope.id})
        if any(o.value != p[3].expected.value for o, p in zip(outcomes, planned, strict=True)):
            # the batch stopped before the step that was to write the heat: write it from the totals the
            # applied steps moved (the steps settled on their own afterwards write theirs)
            self.count("batches_stopped")
            self.refresh_heat_from_totals()

    def _batch_step(self, step: Step, envelope: Envelope, delivery: Delivery, *, done: bool = False) -> BatchStep:
        expected = StepOutcome.DUPLICATE if done else StepOutcome.DONE
        return BatchStep(step, envelope.id, delivery.stream, self.ctx.name, delivery.entry_id, expected)

    @no_done_precheck  # read with the batch's state (or in read_state's round trip)
    def on_result(self, envelope: Envelope[ExecutionResult], delivery: Delivery) -> Step | StepOutcome:
        settled = self._settled.pop(delivery.entry_id, None)
        if settled is not None and settled.message_id == envelope.id:
            if settled.settlement is not None and settled.outcome is StepOutcome.DONE:
                self._count(envelope.message, settled.settlement)
            return settled.outcome
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
        self._count(result, settlement)
        return settlement_step(
            self.ctx.keys,
            result,
            state,
            settlement,
            corr=envelope.corr,
            input_id=envelope.id,
            now_ms=self.ctx.now_ms(),
        )

    def _count(self, result: ExecutionResult, settlement: Settlement) -> None:
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


def _drop_repeated_guards(steps: list[Step]) -> None:
    """Leave out of each step the guards an earlier step of the same batch script checked already.

    The script stops at the first step that does not apply, and each step of the book was computed
    on what the steps before it wrote, so a field one of them checked holds, when a later step runs,
    exactly what that later step expects: checking it again can only pass.
    """
    checked: set[tuple[str, str]] = set()
    for step in steps:
        step.guards = [g for g in step.guards if (g.key, g.field) not in checked]
        checked.update((g.key, g.field) for g in step.guards)


def _heat_in_last_step_only(steps: list[Step], heat_key: str) -> None:
    """Only the last heat write of a batch script is ever seen: leave out the ones before it."""
    last = None
    for index, step in enumerate(steps):
        if any(op[0] == "HSET" and op[1] == heat_key for op in step.ops):
            last = index
    for step in steps[:last] if last is not None else []:
        step.ops = [op for op in step.ops if not (op[0] == "HSET" and op[1] == heat_key)]


def build(ctx: ComponentContext) -> Service:
    return PositionStateService(ctx)
