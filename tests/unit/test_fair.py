"""The fair share's rule and its tags, alone: who may reserve a future slot, who waits its turn."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.quota import fair


def test_a_tag_names_the_priority_and_hides_the_name() -> None:
    """A tag is the priority's initial and 15 hex digits; the caller's own text is not in it."""
    tag = fair.tag("soar-playbook/2.1 token=abc~x", bulk=True)
    assert tag[0] == "b"
    assert len(tag) == 16
    assert int(tag[1:], 16) >= 0
    assert fair.tag("soar-playbook/2.1 token=abc~x", bulk=False)[1:] == tag[1:]
    assert fair.tag("other", bulk=True) != tag


def test_a_tagged_member_gives_its_caller_back_and_an_untagged_one_none() -> None:
    """``tagged`` and ``caller_of`` round-trip; a member without a tag names no caller."""
    member = fair.tagged("i0123456789abcde", "6f1c-req")
    assert fair.caller_of(member) == "i0123456789abcde"
    assert fair.caller_of(member + ".3") == "i0123456789abcde"
    assert fair.caller_of("6f1c-req") == ""
    assert fair.tagged("", "6f1c-req") == "6f1c-req"


def test_a_caller_alone_in_the_queue_reserves_as_much_as_it_likes() -> None:
    """With no other caller waiting, holding reservations defers nothing."""
    assert fair.deferred([("ia", 10), ("ia", 20), ("", 5)], "ia") is None


def test_a_caller_ahead_of_another_waits_for_its_earliest_slot() -> None:
    """Holding as many as the other waiting caller: deferred until its own earliest slot."""
    queue = [("ia", 30), ("ib", 15), ("ia", 20)]
    assert fair.deferred(queue, "ia") == 20
    assert fair.deferred(queue, "ib") is None


def test_callers_of_another_priority_and_untagged_slots_do_not_count() -> None:
    """A bulk caller's queue does not defer an interactive one, nor do untagged reservations."""
    queue = [("ia", 10), ("bz", 11), ("", 12), ("", 13)]
    assert fair.deferred(queue, "ia") is None


@given(
    st.lists(
        st.tuples(st.sampled_from(["", "ia", "ib", "ic", "ba"]), st.integers(1, 100)), max_size=30
    ),
    st.sampled_from(["ia", "ib", "ba"]),
)
def test_deferred_exactly_when_no_waiting_caller_holds_more(
    queue: list[tuple[str, int]], caller: str
) -> None:
    """Deferred iff the caller holds some, another of its priority waits, and none holds more."""
    held: dict[str, int] = {}
    for other, _ in queue:
        if other and other[0] == caller[0]:
            held[other] = held.get(other, 0) + 1
    mine = held.pop(caller, 0)
    expect_deferred = mine > 0 and bool(held) and mine >= min(held.values())
    answer = fair.deferred(queue, caller)
    assert (answer is not None) == expect_deferred
    if answer is not None:
        assert answer == min(slot for other, slot in queue if other == caller)
