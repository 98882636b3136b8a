"""The fair share between callers of one quota: no tool starves while another queues many.

Without it, the queue of a full quota is first come, first served: a tool with eight workers
holds eight reservations for each one of a tool with a single worker, and finishes long before it.
With it, a caller may hold a future slot (a reservation) only while it holds fewer of them than
every other caller of the same priority that is waiting too; otherwise its request is *deferred*:
it takes no slot, and asks again when its own earliest reservation comes due. The callers that
wait thus take the queue's slots in turns, each at most one ahead of the others, whatever their
numbers of workers. A slot free now is taken by whoever asks: the share only orders a queue.

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


def deferred(reservations: Iterable[tuple[str, int]], caller: str) -> int | None:
    """When ``caller`` may ask again (its earliest reservation), or None if it may reserve now.

    ``reservations`` are (tag, slot) of the slots still to come; untagged ones are skipped. The
    caller may reserve while it holds none, or fewer than each other waiting caller of its
    priority (the tags' initial) holds.
    """
    held: dict[str, int] = {}
    mine: int | None = None
    for other, slot in reservations:
        if not other or other[0] != caller[0]:
            continue
        held[other] = held.get(other, 0) + 1
        if other == caller and (mine is None or slot < mine):
            mine = slot
    count = held.pop(caller, 0)
    if count == 0 or not held or count < min(held.values()):
        return None
    return mine
