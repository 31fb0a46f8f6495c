"""Conditions keep lastTransitionTime while their status holds (metav1.Condition semantics)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from quantum_trader_operator.conditions import (
    MAX_MESSAGE_CHARS,
    Condition,
    condition,
    find_condition,
    format_time,
    merge_conditions,
)

EARLIER = "2024-05-01T10:00:00Z"
NOW = datetime(2024, 5, 1, 12, 30, 5, tzinfo=UTC)
NOW_TEXT = "2024-05-01T12:30:05Z"


def old(type_: str, status: str, time: str | None = EARLIER, reason: str = "Before") -> dict:
    result = {"type": type_, "status": status, "reason": reason, "message": "before", "observedGeneration": 1}
    if time is not None:
        result["lastTransitionTime"] = time
    return result


@pytest.mark.parametrize(
    ("previous", "new", "expected_time"),
    [
        ([], Condition("Ready", "True", "AllComponentsHealthy", "ok"), NOW_TEXT),
        ([old("Ready", "True")], Condition("Ready", "True", "AllComponentsHealthy", "ok"), EARLIER),
        # same status, another reason and message: still the same state since EARLIER
        ([old("Ready", "False")], Condition("Ready", "False", "CrashLoopBackOff", "governor: ..."), EARLIER),
        ([old("Ready", "True")], Condition("Ready", "False", "CrashLoopBackOff", "governor: ..."), NOW_TEXT),
        ([old("Ready", "False")], Condition("Ready", "Unknown", "NotReconciledYet", "..."), NOW_TEXT),
        ([old("Ready", "True", time=None)], Condition("Ready", "True", "AllComponentsHealthy", "ok"), NOW_TEXT),
        ([old("ImageConsistent", "True")], Condition("Ready", "True", "AllComponentsHealthy", "ok"), NOW_TEXT),
    ],
)
def test_transition_time(previous, new, expected_time):
    (merged, *_) = merge_conditions(previous, [new], NOW)
    assert merged["type"] == new.type
    assert merged["lastTransitionTime"] == expected_time
    assert (merged["status"], merged["reason"], merged["message"]) == (new.status, new.reason, new.message)


def test_merge_orders_new_first_and_keeps_conditions_it_does_not_own():
    previous = [old("Foreign", "True"), old("Ready", "True")]
    merged = merge_conditions(
        previous,
        [
            Condition("Ready", "True", "AllComponentsHealthy", "ok", 3),
            Condition("WiringValid", "True", "StreamsWired", ""),
        ],
        NOW,
    )
    assert [c["type"] for c in merged] == ["Ready", "WiringValid", "Foreign"]
    assert merged[0]["observedGeneration"] == 3
    assert merged[2] == old("Foreign", "True")


def test_merge_does_not_mutate_its_input():
    previous = [old("Ready", "True")]
    merge_conditions(previous, [Condition("Ready", "False", "Unavailable", "x")], NOW)
    assert previous == [old("Ready", "True")]


def test_merge_accepts_none_and_a_string_time():
    (merged,) = merge_conditions(None, [Condition("Ready", "True", "AllComponentsHealthy", "ok")], NOW_TEXT)
    assert merged["lastTransitionTime"] == NOW_TEXT


def test_merge_refuses_a_type_twice():
    twice = [Condition("Ready", "True", "AllComponentsHealthy", ""), Condition("Ready", "False", "Unavailable", "")]
    with pytest.raises(ValueError, match="twice"):
        merge_conditions([], twice, NOW)


@pytest.mark.parametrize(
    ("status", "reason"),
    [("true", "Fine"), ("Yes", "Fine"), ("True", "not-camel"), ("True", "lowerCase"), ("True", ""), ("True", "Bad.")],
)
def test_condition_validates_status_and_reason(status, reason):
    with pytest.raises(ValueError):
        Condition("Ready", status, reason, "")


def test_condition_helper_is_tri_state():
    assert condition("X", True, "Fine", "").status == "True"
    assert condition("X", False, "Fine", "").status == "False"
    assert condition("X", None, "Fine", "").status == "Unknown"


def test_to_dict_caps_the_message_and_omits_unset_fields():
    result = Condition("Ready", "False", "Unavailable", "x" * (MAX_MESSAGE_CHARS + 10)).to_dict()
    assert len(result["message"]) == MAX_MESSAGE_CHARS
    assert "observedGeneration" not in result and "lastTransitionTime" not in result


def test_format_time_is_utc_and_refuses_naive_datetimes():
    assert format_time(NOW.astimezone(timezone(timedelta(hours=2)))) == NOW_TEXT
    with pytest.raises(ValueError):
        format_time(datetime(2024, 1, 1))


def test_find_condition():
    conditions = [old("Ready", "True"), old("WiringValid", "False")]
    assert find_condition(conditions, "WiringValid")["status"] == "False"
    assert find_condition(conditions, "Missing") is None
    assert find_condition(None, "Ready") is None
