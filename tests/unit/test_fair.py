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
    """With no other caller using the quota, holding reservations defers nothing."""
    assert fair.deferred([("ia", 10), ("ia", 20), ("", 5)], "ia", now=0) is None


def test_a_caller_ahead_of_another_waits_for_its_earliest_slot() -> None:
    """Holding as many as the other waiting caller: deferred until its own earliest slot."""
    queue = [("ia", 30), ("ib", 15), ("ia", 20)]
    assert fair.deferred(queue, "ia", now=0) == 20
    assert fair.deferred(queue, "ib", now=0) is None


def test_a_caller_between_its_slot_and_its_next_request_still_counts() -> None:
    """A caller whose slot has just come holds nothing, yet uses the quota: one ahead waits."""
    entries = [("ib", 90), ("ia", 120)]
    assert fair.deferred(entries, "ia", now=100) == 120
    assert fair.deferred(entries, "ib", now=100) is None


def test_a_caller_that_came_late_catches_up() -> None:
    """Three reservations against four entries of the other caller: it may take another."""
    entries = [("ia", 90), ("ia", 95), ("ia", 110), ("ia", 120), ("ib", 130), ("ib", 140)]
    assert fair.deferred(entries, "ib", now=100) is None
    assert fair.deferred(entries, "ia", now=100) == 110


def test_callers_of_another_priority_and_untagged_slots_do_not_count() -> None:
    """A bulk caller's queue does not defer an interactive one, nor do untagged reservations."""
    queue = [("ia", 10), ("bz", 11), ("", 12), ("", 13)]
    assert fair.deferred(queue, "ia", now=0) is None


def test_a_caller_holding_none_waits_for_one_that_used_less() -> None:
    """A quick single worker holds nothing when it asks, yet waits while a caller that has used
    less holds a reservation: until that reservation is due."""
    entries = [("ia", 80), ("ia", 90), ("ia", 95), ("ib", 85), ("ib", 120)]
    assert fair.deferred(entries, "ia", now=100) == 120
    assert fair.deferred([*entries, ("ic", 110)], "ia", now=100) == 110
    # As many as the other caller: ia takes its slot.
    assert fair.deferred([*entries, ("ib", 140)], "ia", now=100) is None
    # The caller that used less holds nothing: no slot would be left unused, ia takes it.
    assert fair.deferred([("ia", 80), ("ia", 90), ("ib", 85)], "ia", now=100) is None


@given(
    st.lists(
        st.tuples(st.sampled_from(["", "ia", "ib", "ic", "ba"]), st.integers(1, 100)), max_size=30
    ),
    st.sampled_from(["ia", "ib", "ba"]),
    st.integers(0, 100),
)
def test_deferred_exactly_while_a_caller_that_used_less_waits(
    entries: list[tuple[str, int]], caller: str, now: int
) -> None:
    """Holding a reservation: deferred iff the caller has as many entries as the fewest another
    caller of its priority has, until its own earliest reservation. Holding none: deferred iff a
    caller of its priority with fewer entries holds a reservation, until the earliest of those."""
    used: dict[str, int] = {}
    for other, _ in entries:
        if other and other[0] == caller[0]:
            used[other] = used.get(other, 0) + 1
    mine = used.pop(caller, 0)
    ahead = [slot for other, slot in entries if other == caller and slot > now]
    behind = [
        slot for other, slot in entries if other in used and used[other] < mine and slot > now
    ]
    answer = fair.deferred(entries, caller, now)
    if ahead:
        expected = min(ahead) if used and mine >= min(used.values()) else None
    else:
        expected = min(behind) if behind else None
    assert answer == expected
    # Never deferred while nobody holds a reservation.
    if all(slot <= now for _, slot in entries):
        assert answer is None
