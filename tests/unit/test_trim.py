"""Giving memory back once load subsides (``proxy.trim``): when the trimmer trims, and what."""

from __future__ import annotations

import gc
import weakref

import pytest

from proxy.trim import Trimmer, malloc_trim, resident_bytes


class Process:
    """A stand-in for what the trimmer looks at: a state to change, a flag for in flight."""

    def __init__(self) -> None:
        self.answered = 0
        self.connections = 0
        self.in_flight = 0
        self.released = 0

    def state(self) -> tuple[int, int]:
        return self.answered, self.connections

    def busy(self) -> bool:
        return self.in_flight > 0

    def release(self) -> int:
        self.released += 1
        return 1


@pytest.fixture
def process() -> Process:
    """A process that has answered nothing yet."""
    return Process()


@pytest.fixture
def trimmer(process: Process) -> Trimmer:
    """A trimmer of ``process`` that counts its releases instead of calling malloc_trim."""
    return Trimmer(process.state, process.busy, release=process.release)


def test_an_idle_process_that_never_served_is_never_trimmed(
    process: Process, trimmer: Trimmer
) -> None:
    """Nothing changed since start: look after look, nothing is collected or released."""
    assert [trimmer.look() for _ in range(5)] == [False] * 5
    assert (trimmer.trims, process.released) == (0, 0)


def test_a_quiet_look_after_a_burst_trims_once(process: Process, trimmer: Trimmer) -> None:
    """Requests answered, then a whole interval without any: one trim, and none after it."""
    process.answered = 500
    assert trimmer.look() is False  # the burst was still going at this look
    assert trimmer.look() is True
    assert [trimmer.look() for _ in range(5)] == [False] * 5
    assert (trimmer.trims, process.released) == (1, 1)


def test_a_busy_process_is_not_trimmed(process: Process, trimmer: Trimmer) -> None:
    """A request in flight at each look: whatever changed, no trim while it lasts."""
    process.answered = 10
    process.in_flight = 1
    assert [trimmer.look() for _ in range(4)] == [False] * 4
    process.in_flight = 0
    assert trimmer.look() is True


def test_a_process_still_answering_is_not_trimmed(process: Process, trimmer: Trimmer) -> None:
    """Requests answered between every two looks: never a whole quiet interval, never a trim."""
    for _ in range(6):
        process.answered += 3
        assert trimmer.look() is False
    assert trimmer.trims == 0


def test_connections_closing_after_a_trim_bring_one_more(
    process: Process, trimmer: Trimmer
) -> None:
    """Idle upstream connections closed at their keepalive, after the burst's trim: once the
    closing is over, one more trim gives back what they held."""
    process.answered, process.connections = 100, 40
    trimmer.look()
    assert trimmer.look() is True
    process.connections = 0
    assert trimmer.look() is False
    assert trimmer.look() is True
    assert trimmer.look() is False
    assert process.released == 2


def test_a_trim_collects_cycles_the_collector_has_not_reached(trimmer: Trimmer) -> None:
    """Objects that refer to each other, unreachable, go at the trim whatever the thresholds."""

    class Node:
        other: object = None

    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    gc.disable()
    try:
        del first, second
        assert gone() is not None
        trimmer.trim()
        assert gone() is None
    finally:
        gc.enable()


def test_a_trim_tidies_before_it_collects(process: Process) -> None:
    """What ``tidy`` lets go of is collected in the same trim (a cycle it drops is gone by the
    release), and a look that does not trim does not tidy."""
    dropped: list[weakref.ref[object]] = []
    kept: list[object] = []

    def tidy() -> None:
        while kept:
            dropped.append(weakref.ref(kept.pop()))

    class Node:
        def __init__(self) -> None:
            self.me = self

    def release() -> None:
        assert all(ref() is None for ref in dropped)
        process.release()

    gc.disable()
    try:
        kept.append(Node())
        trimmer = Trimmer(process.state, process.busy, release=release, tidy=tidy)
        assert trimmer.look() is False
        assert (kept != [], dropped) == (True, [])
        process.answered = 1
        trimmer.look()
        assert trimmer.look() is True
    finally:
        gc.enable()
    assert (len(dropped), process.released) == (1, 1)
    assert dropped[0]() is None


def test_glibcs_malloc_trim_is_found_and_runs() -> None:
    """On glibc (this machine's C library) the release is malloc_trim(0), which answers 0 or 1."""
    release = malloc_trim()
    assert release is not None
    assert release() in (0, 1)


def test_the_resident_set_is_read_from_proc() -> None:
    """VmRSS as /proc/self/statm gives it, in bytes: more than Python alone could take."""
    resident = resident_bytes()
    assert resident is not None
    assert resident > 8 * 2**20


def test_without_a_resident_reading_a_trim_still_runs(process: Process) -> None:
    """Where /proc cannot be read the trim is not logged, and still collects and releases."""
    trimmer = Trimmer(process.state, process.busy, release=process.release, resident=_none)
    trimmer.trim()
    assert (trimmer.trims, process.released) == (1, 1)


def _none() -> None:
    return None
