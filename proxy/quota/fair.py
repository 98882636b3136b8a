"""The fair share between callers of one quota: no tool starves while another queues many.

Without it, the queue of a full quota is first come, first served: a tool with eight workers
holds eight reservations for each one of a tool with a single worker, and finishes long before it.
With it, the callers' use of the quota is compared: what each was admitted within the quota's
narrowest window, reservations still to come included. Least used first:

- a caller that holds a reservation may take another slot (a reservation, or one free now) only
  while it has used less than every other caller of the same priority that uses the quota too;
  otherwise its request is *deferred*: it takes no slot, and asks again when its own earliest
  reservation comes due;
- a caller that holds none may take a slot unless a caller that has used less holds a
  reservation (then it is deferred until that reservation comes due, when the other caller
  takes its turn), or a caller that has used less was admitted within the *grace* (2 % of the
  narrowest window: 42 ms of 20 per 2.1 s, 1.2 s of 100 a minute) and the window's free slots
  are no more than such callers may take — each ``PACE`` (2) times as many as it was admitted
  within the grace, at most what it lacks to catch up (then it is deferred until that grace is
  over).

The callers thus take the queue's slots in turns, and one that arrived late (or whose workers are
few) catches up with the others within a window, whatever their numbers of workers. The second
rule is there because a caller holds nothing between its answer and its next request (the API's
own time, milliseconds to seconds). A tool with one quick worker would otherwise take a slot
each time it asks; and when a window frees many slots at once, within milliseconds, the tool with
the most workers awake would take them all while the others' answers are on their way: the
share waits for a caller on its way back, as a disk scheduler idles briefly for the process
whose next read is likely near. Waiting is bounded: for a grace at a time, and only while the
free slots would not cover what the callers on their way back may take at their own pace, so a
quota with room to spare defers nobody, a sporadic caller is kept a slot or two rather than all
it lacks, and a slot waits at most a grace for a caller that does not come back (at most 2 % of
the quota's pace, and only then). Without a queue or callers on their way back it
changes nothing, and a caller deferred for a reservation leaves the slot to the reservation's
caller, so the quota's pace is kept.

The rule lives in the stores, next to the reservations it counts, so that it holds across replicas
(the Redis script ports ``deferred`` step for step). A caller is named by a tag in front of the
admission's member (``<tag>~<request id>``): its priority's initial and a hash of the name the
caller gave (``X-Defender-Proxy-Client``, else its ``User-Agent``), so no name a caller chooses
reaches a key or a log through here, and callers of different priorities never share a turn. A
member without a tag (a ``$batch``'s inner requests, which are admitted all or none) is never
deferred and counts for no caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

#: Between a caller's tag and the request's own id in an admission's member.
SEPARATOR: Final = "~"


def tag(name: str, bulk: bool) -> str:
    """The tag of the caller ``name`` at a priority: its initial, then 15 hex digits of a hash.

    Hashed, not written as given: a caller's name may be anything it sends, of any length.
    """
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return ("b" if bulk else "i") + digest[:15]


def tagged(caller: str, member: str) -> str:
    """``member`` carrying the tag ``caller`` ("" leaves it untagged)."""
    return f"{caller}{SEPARATOR}{member}" if caller else member


def caller_of(member: str) -> str:
    """The tag an admission's member carries, or "" for an untagged one."""
    head, sep, _ = member.partition(SEPARATOR)
    return head if sep else ""


def untagged(member: str) -> str:
    """``member`` without its caller's tag."""
    head, sep, rest = member.partition(SEPARATOR)
    return rest if sep else head


#: The longest a caller waits for another that has used less and is likely on its way back, as a
#: share of the quota's narrowest window: 2 % (42 ms of 20 per 2.1 s, 1.2 s of 100 a minute).
GRACE_SHARE: Final = 50


#: How many times its admissions within the last grace a caller on its way back is kept free
#: slots for: what it took in one grace it may take again in the next, and some more.
PACE: Final = 2


def grace(width: int) -> int:
    """How long (µs) a caller's latest admission marks it as on its way back, for a narrowest
    window ``width`` µs wide."""
    return width // GRACE_SHARE


def deferred(
    entries: Iterable[tuple[str, int]], caller: str, now: int, free: int = 0, grace: int = 0
) -> int | None:
    """When ``caller`` may ask again, or None if it may take a slot now.

    ``entries`` are (tag, slot) of the admissions from the quota's narrowest window on: those
    after ``now`` are reservations; untagged ones and other priorities' (the tags' initial) are
    skipped. ``free`` is the number of slots that window has left; ``grace`` how long (µs) after
    its latest admission a caller is taken to be on its way back.

    A caller that holds a reservation waits for its earliest one while it has as many entries as
    the fewest another caller has. A caller that holds none waits while a caller that has used
    less holds a reservation (until the earliest such reservation, when that caller takes its
    turn), or is on its way back (admitted within the grace) and the free slots are no more than
    such callers may take: each ``PACE`` times as many as it was admitted within the grace, no
    more than it lacks to catch up (until its grace runs out).
    """
    used: dict[str, int] = {}
    due: dict[str, int] = {}
    latest: dict[str, int] = {}
    fresh: dict[str, int] = {}
    for other, slot in entries:
        if not other or other[0] != caller[0]:
            continue
        used[other] = used.get(other, 0) + 1
        if slot > now:
            if slot < due.get(other, slot + 1):
                due[other] = slot
        elif slot > now - grace:
            fresh[other] = fresh.get(other, 0) + 1
            if slot > latest.get(other, slot - 1):
                latest[other] = slot
    count = used.pop(caller, 0)
    mine = due.pop(caller, None)
    if mine is not None:
        return mine if used and count >= min(used.values()) else None
    behind = [other for other, n in used.items() if n < count]
    turns = [due[other] for other in behind if other in due]
    coming = [other for other in behind if other not in due and other in fresh]
    # What the callers on their way back may take: PACE times as many as each took within the
    # last grace, no more than it lacks to catch up.
    if coming and free <= sum(min(count - used[other], PACE * fresh[other]) for other in coming):
        turns += [latest[other] + grace for other in coming]
    return min(turns) if turns else None
