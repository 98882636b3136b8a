"""A survey of the differential framing property: every class of mismatch, each at its smallest.

``python -m fuzz.framing --cases 5000 --seed 1`` sends that many generated conversations through
the real proxy (``tests.framediff``), counts the cases of each mismatch class (``Mismatch.kind``),
then asks hypothesis for the smallest conversation that shows each class (``hypothesis.find``
shrinks it) and prints it as raw bytes. Where ``make fuzz`` answers "does it hold?", this answers
"how does it break?".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter

import uvloop
from hypothesis import HealthCheck, Phase, assume, find, given, seed, settings
from hypothesis.errors import NoSuchExample

from tests.framediff import Harness, Mismatch, describe
from tests.framegen import Conversation, conversations


def main(argv: list[str] | None = None) -> int:
    """Survey the mismatch classes; 0 when there were none."""
    parser = argparse.ArgumentParser(prog="python -m fuzz.framing", description=__doc__)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shrink", type=int, default=300, help="cases to find each class again")
    parser.add_argument(
        "--without", action="append", default=[], metavar="NOTE",
        help="leave out conversations with a request whose oddities mention NOTE (repeatable): "
        "to look past a class already known",
    )  # fmt: skip
    args = parser.parse_args(argv)
    global _WITHOUT
    _WITHOUT = tuple(args.without)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        harness = Harness()
        runner.run(harness.start())
        try:
            return _survey(runner, harness, args.cases, args.seed, args.shrink)
        finally:
            runner.run(harness.close())


_WITHOUT: tuple[str, ...] = ()


def _wanted(conversation: Conversation) -> bool:
    notes = [note for request in conversation.requests for note in request.notes]
    return not any(word in note for word in _WITHOUT for note in notes)


def _survey(runner: asyncio.Runner, harness: Harness, cases: int, at: int, shrink: int) -> int:
    counts: Counter[str] = Counter()
    first: dict[str, tuple[Conversation, list[Mismatch]]] = {}

    @seed(at)
    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(conversations())
    def sweep(conversation: Conversation) -> None:
        assume(_wanted(conversation))
        found = runner.run(harness.run(conversation))
        for kind in {m.kind for m in found}:
            counts[kind] += 1
            first.setdefault(kind, (conversation, found))

    started = time.perf_counter()
    sweep()
    seconds = time.perf_counter() - started
    print(f"{harness.cases:,} cases in {seconds:.1f} s ({harness.cases / seconds:.0f}/s)")
    for kind, count in counts.most_common():
        print(f"\n=== {kind}: {count} cases")

        def shows(conversation: Conversation, kind: str = kind) -> bool:
            if not _wanted(conversation):
                return False
            return any(m.kind == kind for m in runner.run(harness.run(conversation)))

        try:
            smallest = find(
                conversations(),
                shows,
                settings=settings(
                    max_examples=shrink,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                ),
            )
        except NoSuchExample:
            smallest = first[kind][0]
        print(describe(smallest))
        again = runner.run(harness.run(smallest))
        for mismatch in again:
            print(f"  {mismatch}")
        if not any(m.kind == kind for m in again):
            # It did not show again (it depends on timing): the case as first seen.
            conversation, found = first[kind]
            print(f"not seen again; first seen as:\n{describe(conversation)}")
            for mismatch in found:
                print(f"  {mismatch}")
    return 1 if counts else 0


if __name__ == "__main__":
    sys.exit(main())
