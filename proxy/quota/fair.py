"""The fair share between callers of one quota: no tool starves while another queues many.

Without it, the queue of a full quota is first come, first served: a tool with eight workers
holds eight reservations for each one of a tool with a single worker, and finishes long before it.
With it, the callers' use of the quota is compared: what each was admitted within the quota's
narrowest window, reservations still to come included. A caller may take a slot (a
reservation, or one free now) while it holds none, or while it has used less than every other caller of the same
priority that uses the quota too; otherwise its request is *deferred*: it takes no slot, and asks
again when its own earliest reservation comes due. The callers thus take the queue's slots in
turns, and one that arrived late (or whose workers are few) catches up with the others within a
window, whatever their numbers of workers. The rule holds for a slot free now too: when a window
frees many slots at once, the first caller to wake would otherwise take them all with its many
workers. Without a queue it changes nothing (a caller that holds no reservation is never
deferred), and a deferred caller always holds a reservation of its own, so the quota's pace is
kept: what one caller may not take now, another that has used less may.

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


def deferred(entries: Iterable[tuple[str, int]], caller: str, now: int) -> int | None:
    """When ``caller`` may ask again (its earliest reservation), or None if it may reserve now.

    ``entries`` are (tag, slot) of the admissions from the quota's narrowest window on: those
    after ``now`` are reservations; untagged ones are skipped. The caller may reserve while it
    holds no reservation, or while it has fewer entries than each other caller of its priority
    (the tags' initial) has.
    """
    used: dict[str, int] = {}
    mine: int | None = None
    for other, slot in entries:
        if not other or other[0] != caller[0]:
            continue
        used[other] = used.get(other, 0) + 1
        if other == caller and slot > now and (mine is None or slot < mine):
            mine = slot
    count = used.pop(caller, 0)
    if mine is None or not used or count < min(used.values()):
        return None
    return mine
