"""Memory given back once load subsides: a full collection, then glibc's ``malloc_trim``.

A burst (a thousand callers at once, a hundred upstream connections opened for them) grows the
process, and most of what it grew by is freed when the burst ends, but not given back:

- objects that refer to each other wait for the cycle collector, which runs on allocations, so a
  process that has gone quiet may keep them for hours;
- glibc keeps freed heap memory for reuse and returns to the system only what is free at the top
  of its heap; ``malloc_trim(0)`` hands back every whole free page, wherever it lies. jemalloc
  (``proxy.allocator``) purges unused pages after ten seconds by itself; a purge of every arena
  does it at once.

So every ``INTERVAL`` seconds the proxy looks at what it is doing: the requests answered so far, the
connections it holds open (callers and upstream). When nothing is in flight, nothing changed since
the last look (a whole interval of quiet), and something changed since the last trim (a burst, or
connections that closed since, an idle upstream connection at its keepalive, say), it collects and
trims once. A busy proxy never trims (the memory it holds is memory it uses), a quiet one trims
once after each change, and an idle one never again.

What neither can give back is memory the allocators keep for the few objects still alive in it
(CPython's pools of small objects, pages of the heap shared with live blocks): a burst costs a
little for good. The cost of a trim is a few milliseconds of the event loop, once per quiet spell.
Where the C library has no ``malloc_trim`` and jemalloc is not loaded (musl, macOS), only the
collection runs.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Hashable
from typing import Final

from proxy.logs import get_logger

#: Seconds between two looks: a burst's memory goes back within two of them once it ends.
INTERVAL: Final = 10.0

_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """The process's resident set size in bytes, from ``/proc/self/statm`` (None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def malloc_trim() -> Callable[[], object] | None:
    """What gives freed memory back: on jemalloc (``proxy.allocator``), a flush of the event
    loop thread's cache and a purge of every arena's unused pages; else glibc's
    ``malloc_trim(0)``; None where the C library has neither."""
    # ctypes is imported at the first trim, after a burst: an idle proxy never loads it.
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    mallctl = getattr(libc, "mallctl", None)
    if mallctl is not None:
        mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]
        mallctl.argtypes += [ctypes.c_void_p, ctypes.c_size_t]
        mallctl.restype = ctypes.c_int

        def purge() -> int:
            # 4096 is MALLCTL_ARENAS_ALL: every arena at once.
            mallctl(b"thread.tcache.flush", None, None, None, 0)
            return int(mallctl(b"arena.4096.purge", None, None, None, 0))

        return purge
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class Trimmer:
    """The looks at the process, and the trims they decide on.

    ``state`` says what the process is doing (any value that changes when a request is answered
    or a connection opens or closes); ``busy`` whether a request is in flight. ``tidy`` drops
    what the process holds but no longer needs (the quota tables' expired keys) before each
    collection. ``release`` gives freed memory back to the system (default: ``malloc_trim``,
    looked up at the first trim).
    """

    def __init__(
        self,
        state: Callable[[], Hashable],
        busy: Callable[[], bool],
        interval: float = INTERVAL,
        release: Callable[[], object] | None = None,
        resident: Callable[[], int | None] = resident_bytes,
        tidy: Callable[[], object] | None = None,
    ) -> None:
        self._state = state
        self._tidy = tidy
        self._busy = busy
        self.interval = interval
        self._release = release
        self._looked_up = release is not None
        self._resident = resident
        self._seen: Hashable = state()
        #: the state at the last trim (at start: the state the proxy started in)
        self._trimmed: Hashable = self._seen
        #: how many trims so far
        self.trims = 0

    def look(self) -> bool:
        """Look once; trim if the process has been quiet since the last look and changed since
        the last trim. Whether it trimmed."""
        now = self._state()
        quiet = now == self._seen and not self._busy()
        self._seen = now
        if not quiet or now == self._trimmed:
            return False
        self._trimmed = now
        self.trim()
        return True

    def trim(self) -> None:
        """Drop what is no longer needed, collect every generation, then give freed memory
        back to the system."""
        before = self._resident()
        if self._tidy is not None:
            self._tidy()
        gc.collect()
        if not self._looked_up:
            self._looked_up = True
            self._release = malloc_trim()
        if self._release is not None:
            self._release()
        self.trims += 1
        after = self._resident()
        if before is not None and after is not None:
            get_logger("memory").debug(
                "memory given back",
                rss_before_mib=round(before / 2**20, 1),
                rss_after_mib=round(after / 2**20, 1),
            )

    async def run(self) -> None:
        """Look every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.look()
