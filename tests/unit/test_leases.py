"""Tests for proxy.leases: keys held until a time, forgotten after, a bounded table exact when full."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.leases import Leases, Overflow


def test_a_key_is_forgotten_once_its_time_has_passed() -> None:
    """Held until 10: still there at 9.9, gone (and reported) after a sweep at 10."""
    forgotten: list[str] = []
    leases: Leases[str] = Leases(on_forget=forgotten.append)
    assert leases.hold("a", 10.0)
    leases.sweep(9.9)
    assert "a" in leases
    leases.sweep(10.0)
    assert "a" not in leases
    assert forgotten == ["a"]


def test_extend_keeps_a_key_past_its_first_time() -> None:
    """A key extended to 20 survives the sweep at its first time, 10, and goes at 20."""
    leases: Leases[str] = Leases()
    leases.hold("a", 10.0)
    leases.extend("a", 20.0)
    leases.extend("a", 15.0)  # never shortens
    leases.sweep(19.0)
    assert leases.until("a") == 20.0
    leases.sweep(20.0)
    assert len(leases) == 0


def test_a_full_table_refuses_until_a_key_falls_idle() -> None:
    """At most two at once: a third is refused while both are held, taken once one has gone."""
    leases: Leases[str] = Leases(2)
    assert leases.hold("a", 10.0)
    assert leases.hold("b", 30.0)
    assert not leases.hold("c", 40.0)
    assert "c" not in leases
    assert leases.hold("a", 12.0)  # a key held is always held again
    leases.sweep(12.0, None)
    assert leases.hold("c", 40.0)
    assert sorted(k for k in "abc" if k in leases) == ["b", "c"]


def test_a_routine_sweep_keeps_to_its_budget() -> None:
    """A sweep looks at no more due entries than its budget; the rest go on later sweeps."""
    leases: Leases[int] = Leases()
    for key in range(100):
        leases.hold(key, 1.0)
    leases.sweep(2.0, budget=64)
    assert len(leases) == 36
    leases.sweep(2.0, budget=64)
    assert len(leases) == 0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["hold", "extend", "sweep"]),
            st.integers(0, 7),
            st.integers(0, 50),
        ),
        max_size=80,
    )
)
def test_after_a_full_sweep_exactly_the_keys_not_yet_due_are_held(
    ops: list[tuple[str, int, int]],
) -> None:
    """Against a plain dict: a full sweep at ``now`` leaves exactly the keys held beyond ``now``,
    each with its latest time, and never more than the bound."""
    leases: Leases[int] = Leases(4)
    model: dict[int, int] = {}
    now = 0
    for op, key, step in ops:
        if op == "sweep":
            now += step
            leases.sweep(now, None)
            model = {k: u for k, u in model.items() if u > now}
            assert {k: leases.until(k) for k in range(8) if k in leases} == model
        elif op == "hold":
            until = now + step
            took = leases.hold(key, until)
            if key in model:
                assert took
                model[key] = max(model[key], until)
            elif len(model) < 4:
                assert took
                model[key] = until
            else:
                assert not took
        else:
            leases.extend(key, now + step)
            if key in model:
                model[key] = max(model[key], now + step)
        assert len(leases) <= 4


def test_the_overflow_keeps_whom_it_took_while_it_holds_anything() -> None:
    """A key sent to the overflow stays on it while the overflow is busy; a new key does not,
    unless the record is full; once the overflow is idle every key is free again."""
    overflow = Overflow(most=2)
    overflow.send("a", until=10.0)
    assert overflow.keeps("a", now=5.0)
    assert not overflow.keeps("b", now=5.0)
    overflow.send("b", until=12.0)
    assert overflow.keeps("c", now=5.0)  # two recorded: a third may be one it could not record
    assert not overflow.keeps("a", now=12.0)
    assert not overflow.keeps("c", now=12.0)
    overflow.send("c", until=20.0)
    assert not overflow.keeps("a", now=15.0)  # the record was cleared when the overflow idled
