"""The fair share between callers of one quota: no tool starves while another queues many.

Without it, the queue of a full quota is first come, first served: a tool with eight workers
holds eight reservations for each one of a tool with a single worker, and finishes long before it.
With it, the callers' use of the quota is compared: what each was admitted within the quota's
narrowest window, reservations still to come included. Least used first:

- a caller that holds a reservation may take another slot (a reservation, or one free now) only
  while it has used less than every other caller of the same priority that uses the quota too;
  otherwise its request is *deferred*: it takes no slot, and asks again when its own earliest
  reservation comes due;
- a caller that holds none may take a slot unless another caller that has used less holds a
  reservation; then it is deferred until that reservation comes due, when the other caller takes
  its turn. Without this, a tool with one quick worker asks again the moment its slot comes,
  holds nothing each time it asks, and takes a slot every time.

The callers thus take the queue's slots in turns, and one that arrived late (or whose workers are
few) catches up with the others within a window, whatever their numbers of workers. The rule
holds for a slot free now too: when a window frees many slots at once, the first caller to wake
would otherwise take them all with its many workers. Without a queue it changes nothing (nobody
holds a reservation, so nobody is deferred), and a caller is only ever deferred while some caller
holds a reservation that will take the quota's next slot, so the quota's pace is kept: what one
caller may not take now, another that has used less will.

Recent slots count, not only reservations: between its answer and its next request (the API's
own time, milliseconds to seconds) a caller holds nothing, and another caller's many workers,
woken by the same slot, would otherwise take the whole queue in that gap.

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


def deferred(entries: Iterable[tuple[str, int]], caller: str, now: int) -> int | None:
    """When ``caller`` may ask again, or None if it may take a slot now.

    ``entries`` are (tag, slot) of the admissions from the quota's narrowest window on: those
    after ``now`` are reservations; untagged ones and other priorities' (the tags' initial) are
    skipped. A caller that holds a reservation waits for its earliest one while it has as many
    entries as the fewest another caller has. A caller that holds none waits while another
    caller that has used less holds a reservation: until the earliest such reservation, when that
    caller takes its turn.
    """
    used: dict[str, int] = {}
    due: dict[str, int] = {}
    for other, slot in entries:
        if not other or other[0] != caller[0]:
            continue
        used[other] = used.get(other, 0) + 1
        if slot > now and slot < due.get(other, slot + 1):
            due[other] = slot
    count = used.pop(caller, 0)
    mine = due.pop(caller, None)
    if mine is not None:
        return mine if used and count >= min(used.values()) else None
    behind = [slot for other, slot in due.items() if used[other] < count]
    return min(behind) if behind else None
