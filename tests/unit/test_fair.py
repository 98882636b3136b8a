"""The fair share's rule and its tags, alone: who may reserve a future slot, who waits its turn."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.quota import fair
from proxy.quota.memory import MemoryStore
from proxy.quota.store import Quota, as_windows


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


def test_a_caller_on_its_way_back_is_waited_for_while_the_free_slots_are_short() -> None:
    """A caller that has used less and was admitted within the grace is likely on its way back:
    one that has used more waits out that grace while the free slots are no more than it may
    take (twice as many as it was admitted within the grace, at most what it lacks)."""
    entries = [("ia", 90), ("ia", 95), ("ia", 98), ("ia", 99), ("ia", 99), ("ib", 97)]
    assert fair.deferred(entries, "ia", now=100, free=2, grace=5) == 102
    # More free slots than twice what ib took within its grace: ia takes one.
    assert fair.deferred(entries, "ia", now=100, free=3, grace=5) is None
    # ib took two within the grace but lacks only one: one free slot is kept for it.
    near = [("ia", 90), ("ia", 95), ("ia", 98), ("ib", 97), ("ib", 96)]
    assert fair.deferred(near, "ia", now=100, free=1, grace=5) == 102
    assert fair.deferred(near, "ia", now=100, free=2, grace=5) is None
    # ib's grace is over: it is not coming back soon, nothing waits for it.
    assert fair.deferred(entries, "ia", now=100, free=0, grace=3) is None
    # A reservation of a caller that has used less comes first, if it is earlier.
    assert fair.deferred([*entries, ("ic", 101)], "ia", now=100, free=0, grace=5) == 101
    # The caller on its way back is not held back itself.
    assert fair.deferred(entries, "ib", now=100, free=0, grace=5) is None


def expected_turn(
    entries: list[tuple[str, int]], caller: str, now: int, free: int, grace: int
) -> int | None:
    """The rule as the README states it, caller by caller."""
    mine = [(o, slot) for o, slot in entries if o and o[0] == caller[0]]
    others = {o for o, _ in mine if o != caller}
    count = sum(1 for o, _ in mine if o == caller)

    def used(o: str) -> int:
        return sum(1 for p, _ in mine if p == o)

    def reservations(o: str) -> list[int]:
        return [slot for p, slot in mine if p == o and slot > now]

    if reservations(caller):
        if others and count >= min(used(o) for o in others):
            return min(reservations(caller))
        return None
    lighter = [o for o in others if used(o) < count]
    turns = [min(reservations(o)) for o in lighter if reservations(o)]

    def within_grace(o: str) -> int:
        return sum(1 for p, slot in mine if p == o and now - grace < slot <= now)

    back = [o for o in lighter if not reservations(o) and within_grace(o)]
    if back and free <= sum(min(count - used(o), 2 * within_grace(o)) for o in back):
        turns += [max(slot for p, slot in mine if p == o) + grace for o in back]
    return min(turns) if turns else None


@given(
    st.lists(
        st.tuples(st.sampled_from(["", "ia", "ib", "ic", "ba"]), st.integers(1, 100)), max_size=30
    ),
    st.sampled_from(["ia", "ib", "ba"]),
    st.integers(0, 100),
    st.integers(-3, 8),
    st.sampled_from([0, 1, 5, 30]),
)
def test_deferred_exactly_as_the_rule_says(
    entries: list[tuple[str, int]], caller: str, now: int, free: int, grace: int
) -> None:
    """Holding a reservation: deferred iff the caller has as many entries as the fewest another
    caller of its priority has, until its own earliest reservation. Holding none: until the
    earliest reservation of a caller that has used less, or the end of the grace of one on its
    way back while the free slots are no more than such callers may take."""
    answer = fair.deferred(entries, caller, now, free, grace)
    assert answer == expected_turn(entries, caller, now, free, grace)
    if answer is not None:
        assert answer > now
    # Never deferred while nobody holds a reservation or is on its way back.
    if all(slot + grace <= now for _, slot in entries):
        assert answer is None


async def test_an_uncontended_quota_keeps_only_its_last_window_of_callers() -> None:
    """Admissions that skip the share's scan (room to spare, nobody queued) still trim what the
    in-process store keeps of the callers: a window's worth, however long it runs."""
    clock = [1000.0]
    store = MemoryStore(lambda: clock[0])
    quota = Quota("dp:{test:trim}", as_windows(((1000, 1.0),), 0.0))
    for i in range(2_000):
        clock[0] += 0.01
        decision = await store.admit(quota, fair.tagged("ia", f"r{i}"), 0.0, 0.0, False)
        assert decision.admitted
    assert len(store._callers[quota.key]) <= 101
