"""The reconciler's contract for positions the internal side does not know (issue 8, defect 1): found,
corrected and halting — and an order in flight explains a difference only for a bounded time."""

from __future__ import annotations

import pytest

from quantum_trader.contracts.messages import PositionSide, ReconcileKind
from quantum_trader.execution.reconcile import Holding, explained_since_next, reconcile

LONG = Holding(PositionSide.LONG, 1.0, 100.0)
STEPS = {"AUSDT": 0.001, "BUSDT": 0.001}
BOUND = 10_000


def run(internal, exchange, in_flight=frozenset(), since=None, now=0):
    return reconcile(internal, exchange, step_sizes=STEPS, in_flight=in_flight, explained_since=since or {},
                     now_ms=now, explain_for_ms=BOUND)


@pytest.mark.parametrize("internal", [{}, {"AUSDT": Holding.flat()}])
def test_an_exchange_position_without_an_internal_record_needs_correction(internal):
    (finding,) = run(internal, {"AUSDT": LONG})
    assert finding.kind is ReconcileKind.UNKNOWN_TO_INTERNAL and finding.needs_correction


def test_an_order_in_flight_explains_it_within_the_bound_and_not_after():
    in_flight = frozenset({"AUSDT"})
    since: dict[str, int] = {}
    explained = []
    for now in (0, 5_000, BOUND, BOUND + 1):
        findings = run({}, {"AUSDT": LONG}, in_flight, since, now)
        explained.append(findings[0].explained)
        since = explained_since_next(findings, in_flight, since, now)
    assert explained == [True, True, True, False]
    assert since == {}  # unexplained now: corrected, the clock starts afresh


def test_the_clock_restarts_when_the_difference_or_the_order_in_flight_goes_away():
    in_flight = frozenset({"AUSDT"})
    findings = run({}, {"AUSDT": LONG}, in_flight, {}, 0)
    since = explained_since_next(findings, in_flight, {}, 0)
    assert since == {"AUSDT": 0}
    matched = run({"AUSDT": LONG}, {"AUSDT": LONG}, in_flight, since, 5_000)
    assert explained_since_next(matched, in_flight, since, 5_000) == {}
    no_order = run({}, {"AUSDT": LONG}, frozenset(), since, 5_000)
    assert no_order[0].needs_correction
    assert explained_since_next(no_order, frozenset(), since, 5_000) == {}


def test_each_symbol_has_its_own_clock():
    in_flight = frozenset({"AUSDT", "BUSDT"})
    since = {"AUSDT": 0}
    findings = run({}, {"AUSDT": LONG, "BUSDT": LONG}, in_flight, since, BOUND + 1)
    assert [(f.symbol, f.explained) for f in findings] == [("AUSDT", False), ("BUSDT", True)]
    assert explained_since_next(findings, in_flight, since, BOUND + 1) == {"BUSDT": BOUND + 1}


def test_without_a_bound_an_order_in_flight_explains_as_before():
    findings = reconcile({}, {"AUSDT": LONG}, step_sizes=STEPS, in_flight=frozenset({"AUSDT"}))
    assert findings[0].explained
