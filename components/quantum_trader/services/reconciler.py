"""reconciler: on start and every interval, internal positions against the exchange (invariant 7).

Unexplained drift is corrected to the exchange's numbers, reported on ``reconcile.events`` and
halts entries automatically until a person releases them. An exchange position with no internal
record is drift like any other: recorded, reported, entries halted. An order in flight explains a
difference for at most ``explain_for_seconds`` (ten intervals, and never less than an approval's
life plus two request timeouts): a result that never comes cannot hide a position.
"""

from __future__ import annotations

import time

from quantum_trader.bus.codec import text, text_dict
from quantum_trader.bus.control import raise_halt
from quantum_trader.bus.step import Step, StepRunner
from quantum_trader.contracts.messages import PositionSide, PositionSnapshot, ReconcileEvent, ReconcileKind
from quantum_trader.exchange.client import ExchangeClient
from quantum_trader.exchange.connect import exchange_client
from quantum_trader.exchange.errors import ExchangeError
from quantum_trader.execution.reconcile import Finding, Holding, explained_since_next, reconcile
from quantum_trader.runtime.service import ComponentContext, Service


class Reconciler(Service):
    def __init__(self, ctx: ComponentContext, client: ExchangeClient | None = None) -> None:
        super().__init__(ctx)
        self.exchange = client or exchange_client(ctx.policy, ctx.settings)
        self.spec = ctx.policy.reconciler
        self.steps = StepRunner(
            ctx.client, ctx.keys, "reconciler", ctx.policy.streams.max_len, ctx.policy.streams.done_ttl_seconds
        )
        self._next_run = 0.0
        self.runs = 0
        self.last_findings: list[Finding] = []
        self.matched = False
        self.explained_since: dict[str, int] = {}
        """symbol -> when its difference was first explained by an order in flight (ms)"""
        policy = ctx.policy
        self.explain_for_seconds = max(
            10 * self.spec.interval_seconds,
            policy.risk.approval_ttl_seconds + 2 * policy.exchange.request_timeout_seconds,
        )

    def idle(self) -> float:
        now = time.monotonic()
        if now >= self._next_run:
            try:
                self.run_once()
            except ExchangeError as error:  # unreachable exchange: say so, try again next interval
                self.count("exchange_errors")
                self.matched = False
                self.ctx.log.warning("reconcile skipped: exchange error", extra={"error": str(error)})
            self._next_run = time.monotonic() + self.spec.interval_seconds
        return max(0.05, self._next_run - time.monotonic())

    def ready(self) -> tuple[bool, str]:
        return (self.runs > 0, f"{self.runs} runs, matched={self.matched}")

    def internal_positions(self) -> dict[str, tuple[Holding, dict[str, str]]]:
        client, keys = self.ctx.client, self.ctx.keys
        symbols = set(text_dict(client.hgetall(keys.open_positions))) | set(self.ctx.policy.symbols)
        result = {}
        for symbol in sorted(symbols):
            raw = text_dict(client.hgetall(keys.position(symbol)))
            if not raw:
                continue
            side = PositionSide(raw.get("side", "FLAT"))
            holding = Holding(side, float(raw.get("qty", 0) or 0), float(raw.get("entry_price", 0) or 0))
            result[symbol] = (holding, raw)
        return result

    def in_flight(self) -> frozenset[str]:
        client, keys = self.ctx.client, self.ctx.keys
        return frozenset(text(k) for k in (*client.hkeys(keys.entry_locks), *client.hkeys(keys.exit_locks)))

    def run_once(self) -> list[Finding]:
        # The reads are not one snapshot, so their order matters: an order in flight holds its symbol's
        # lock from approval until position-state commits its fill. Locks read before and after the
        # exchange, and internal positions last: a fill the exchange shows and position-state has not
        # committed is still locked at the second read (or committed by the internal read), and a fill
        # committed after the exchange read was locked at the first read unless its whole life (approval,
        # order, commit) fell between the exchange answer and the next Redis call.
        locked_before = self.in_flight()
        exchange = {p.symbol: Holding(p.side, p.qty, p.entry_price) for p in self.exchange.positions() if p.qty > 0}
        in_flight = locked_before | self.in_flight()
        internal = self.internal_positions()
        step_sizes = {}
        for symbol in set(internal) | set(exchange):
            try:
                step_sizes[symbol] = float(self.exchange.filters(symbol).order_step)
            except ExchangeError:
                step_sizes[symbol] = 0.0
        now = self.ctx.now_ms()
        findings = reconcile(
            {s: h for s, (h, _) in internal.items()},
            exchange,
            step_sizes=step_sizes,
            in_flight=in_flight,
            qty_tolerance_steps=self.spec.qty_tolerance_steps,
            entry_tolerance=self.spec.entry_tolerance,
            explained_since=self.explained_since,
            now_ms=now,
            explain_for_ms=int(self.explain_for_seconds * 1000),
        )
        self.explained_since = explained_since_next(findings, in_flight, self.explained_since, now)
        self.runs += 1
        self.counters["processed"] = self.runs
        self.counters["last_event_ms"] = self.ctx.now_ms()
        self.last_findings = findings
        self.matched = all(f.kind is ReconcileKind.MATCHED for f in findings)
        for finding in findings:
            if finding.kind is ReconcileKind.MATCHED:
                continue
            self.report(finding, internal.get(finding.symbol, (None, {}))[1])
        self.ctx.client.hset(
            self.ctx.keys.component_state("reconciler", "status"),
            mapping={
                "matched": "1" if self.matched else "0",
                "time": str(self.ctx.now_ms()),
                "runs": str(self.runs),
                "findings": str(sum(1 for f in findings if f.kind is not ReconcileKind.MATCHED)),
            },
        )
        return findings

    def report(self, finding: Finding, raw: dict[str, str]) -> None:
        now = self.ctx.now_ms()
        action = "recheck_next_interval" if finding.explained else "corrected_to_exchange; entries halted"
        event = ReconcileEvent(
            symbol=finding.symbol,
            kind=finding.kind,
            explained=finding.explained,
            internal_side=finding.internal.side,
            internal_qty=finding.internal.qty,
            internal_entry=finding.internal.entry_price,
            exchange_side=finding.exchange.side,
            exchange_qty=finding.exchange.qty,
            exchange_entry=finding.exchange.entry_price,
            action=action,
            time=now,
        )
        step = Step().emit("reconcile.events", event, id=f"rec:{finding.symbol}:{now}")
        if not finding.explained:
            self.correct(step, finding, raw, now)
            self.count("corrections")
        self.steps.run(step, message_id=f"reconcile:{finding.symbol}:{now}")
        if not finding.explained:
            raise_halt(
                self.ctx.client,
                self.ctx.keys,
                "reconciler",
                f"unexplained drift on {finding.symbol}: {finding.kind.value}",
            )
            self.ctx.log.error(
                "unexplained drift: entries halted", extra={"symbol": finding.symbol, "kind": finding.kind.value}
            )

    def correct(self, step: Step, finding: Finding, raw: dict[str, str], now: int) -> None:
        """Make the internal position the exchange's. Bumping ``version`` voids position-state's in-flight guard.

        Stop-loss, take-profit and the opening time survive only when the side did not change.
        """
        keys = self.ctx.keys
        symbol, truth = finding.symbol, finding.exchange
        version = int(raw.get("version", 0) or 0) + 1
        same_position = truth.is_open and finding.internal.side is truth.side
        levels = {name: raw[name] for name in ("stop_loss", "take_profit") if same_position and raw.get(name)}
        opened_at = int(raw.get("opened_at") or now) if same_position else (now if truth.is_open else 0)
        # DEL first: no field of the old position (levels, fees, plan ids) may outlive the correction
        step.write("DEL", keys.position(symbol))
        if truth.is_open:
            fields = {
                "side": truth.side.value,
                "qty": repr(truth.qty),
                "entry_price": repr(truth.entry_price),
                "version": str(version),
                "opened_at": str(opened_at),
                **levels,
            }
            step.write("HSET", keys.position(symbol), *(x for kv in fields.items() for x in kv))
            notional = truth.qty * truth.entry_price
            step.tally("HSET", keys.open_positions, symbol, notional, totals=keys.open_positions_totals)
        else:
            step.write(
                "HSET", keys.position(symbol), "side", "FLAT", "qty", "0", "entry_price", "0", "version", str(version)
            )
            step.tally("HDEL", keys.open_positions, symbol, totals=keys.open_positions_totals)
        snapshot = PositionSnapshot(
            symbol=symbol,
            side=truth.side if truth.is_open else PositionSide.FLAT,
            qty=truth.qty if truth.is_open else 0.0,
            entry_price=truth.entry_price if truth.is_open else 0.0,
            mark_price=truth.entry_price if truth.is_open else 0.0,
            unrealized_pnl=0.0,
            stop_loss=float(levels["stop_loss"]) if "stop_loss" in levels else None,
            take_profit=float(levels["take_profit"]) if "take_profit" in levels else None,
            opened_at=opened_at,
            time=now,
            source="reconciler",
            version=version,
        )
        step.emit("position.snapshot", snapshot, id=f"snap:reconciler:{symbol}:{version}:{now}")
        # position-state's running heat totals hold this position's old risk: it rebuilds them from
        # every position once it sees the state is not ok (and writes no heat from them until then)
        step.write("HSET", keys.portfolio_risk_total, "state", "rebuild:reconciler")


def build(ctx: ComponentContext) -> Service:
    return Reconciler(ctx)
