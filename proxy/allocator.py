"""The memory allocator the proxy runs on: jemalloc where the system has it.

CPython keeps small objects in 1 MiB arenas of its own and gives an arena back only once every
object in it is gone. A burst (a thousand keep-alive callers, each connection holding ~12 KB of
objects while it waits for its next request) spreads over a dozen arenas, and a few objects that
outlive it in each (the event loop's free lists, caches, a connection still open) keep nearly all
of them resident for good: 1.26 × the idle RSS after ``bench.overhead``'s rounds. glibc's
``malloc`` under ``PYTHONMALLOC=malloc`` does no better, its heap mixing every size in one page.
jemalloc keeps each size in slabs of a few pages and purges every page a quiet process no longer
uses (``proxy.trim``), so a burst costs little more than what is still alive: 1.086 × in the
same bench. It costs 1.5–1.8 MiB more at idle, and no CPU or latency beyond the bench's noise.

An allocator is fixed before the interpreter starts (``LD_PRELOAD``, ``PYTHONMALLOC``), so
``defender-proxy run`` starts itself once more, the same command in the same process (``execve``),
with them set when ``allocator`` asks for jemalloc and the process runs on something else:

- ``auto`` (the default): jemalloc where ``libjemalloc.so.2`` is found (Debian and Ubuntu:
  ``apt-get install libjemalloc2``; the image ships it), else the system's allocator, as before;
  so too where the environment chose already (a ``PYTHONMALLOC`` of its own, another allocator
  in ``LD_PRELOAD``), under ``python -E``/``-I`` (which ignore ``PYTHONMALLOC``), and after one
  try where the second start is still not on it (the loader refused the library): never a
  third start;
- ``jemalloc``: jemalloc, over what the environment chose, or a clear error at start (exit 2);
- ``system``: CPython's and the C library's, never a restart.

``MALLOC_CONF`` is ``narenas:1`` unless the environment sets it: the proxy allocates on one
thread, the event loop's, and one arena keeps the idle process smallest. The start-up line names
the allocator the process runs on (``allocator``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Final

ALLOCATORS: Final = ("auto", "jemalloc", "system")
JEMALLOC: Final = "libjemalloc.so.2"
#: jemalloc's own settings when the environment gives none: one arena (see above)
MALLOC_CONF: Final = "narenas:1"
#: set in the environment of the second start: a start that is still not on jemalloc (the
#: loader refused the library) does not try again
_RESTARTED: Final = "DEFENDER_PROXY_ALLOCATOR_RESTARTED"


class AllocatorError(Exception):
    """``allocator: jemalloc`` and no jemalloc to run on."""


def library_dirs(root: str = "/usr/lib") -> list[str]:
    """Where a shared library is looked for: the multiarch directories under ``root``
    (``x86_64-linux-gnu``; this machine's architecture first), then ``/usr/lib64``, ``root``
    itself and ``/usr/local/lib``."""
    # Listed rather than read from sysconfig, whose build-time table costs 0.25 MiB to load.
    try:
        with os.scandir(root) as entries:
            multiarch = sorted(e.name for e in entries if "-linux-" in e.name and e.is_dir())
    except OSError:
        multiarch = []
    machine = os.uname().machine
    multiarch.sort(key=lambda name: not name.startswith(f"{machine}-"))
    return [*(f"{root}/{name}" for name in multiarch), "/usr/lib64", root, "/usr/local/lib"]


def find_jemalloc(dirs: Sequence[str] | None = None) -> str | None:
    """The path of ``libjemalloc.so.2`` in the first of ``dirs`` that has it, or None."""
    for directory in library_dirs() if dirs is None else dirs:
        path = os.path.join(directory, JEMALLOC)
        if os.path.isfile(path):
            return path
    return None


def running(maps: str = "/proc/self/maps", pymalloc: bool | None = None) -> str:
    """The allocator this process runs on: ``jemalloc`` when it is loaded and CPython hands it
    every object, not keeping them in arenas of its own (``pymalloc``, by default read off the
    interpreter: it counts the blocks of its arenas, and none without them; ``PYTHONMALLOC`` is
    ignored under ``python -E`` or ``-I``), else ``system``."""
    if sys.getallocatedblocks() > 0 if pymalloc is None else pymalloc:
        return "system"
    try:
        with open(maps, encoding="ascii", errors="replace") as mapped:
            loaded = any("/libjemalloc.so" in line for line in mapped)
    except OSError:
        # No /proc to read (a sandbox without it): what was asked of the loader is the best word.
        loaded = "libjemalloc.so" in os.environ.get("LD_PRELOAD", "")
    return "jemalloc" if loaded else "system"


def chosen_elsewhere(environ: Mapping[str, str]) -> str | None:
    """What the environment already chose for memory, which ``auto`` leaves as it is: a
    ``PYTHONMALLOC`` of its own (CPython's debug hooks, say), or another allocator preloaded
    (mimalloc, tcmalloc, glibc's debugging malloc); None when it chose nothing."""
    if environ.get("PYTHONMALLOC", "") not in ("", "malloc"):
        return f"PYTHONMALLOC={environ['PYTHONMALLOC']}"
    for library in environ.get("LD_PRELOAD", "").replace(":", " ").split():
        name = os.path.basename(library)
        if "malloc" in name and not name.startswith("libjemalloc."):
            return f"LD_PRELOAD names {name}"
    return None


def environment_for(library: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with ``library`` preloaded (before whatever else is), every object handed to
    it, and ``MALLOC_CONF`` unless one is set."""
    env = dict(environ)
    preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != library]
    env["LD_PRELOAD"] = " ".join([library, *preload])
    env["PYTHONMALLOC"] = "malloc"
    if not env.get("MALLOC_CONF"):
        env["MALLOC_CONF"] = MALLOC_CONF
    env[_RESTARTED] = "1"
    return env


def restart_on(
    choice: str,
    *,
    now: str | None = None,
    library: str | None = None,
    environ: Mapping[str, str] | None = None,
    ignore_environment: bool | None = None,
) -> tuple[str, dict[str, str]] | None:
    """What to start again with, for ``choice`` in a process on ``now`` (default: ``running()``):
    (executable, environment), or None to go on as it is. ``auto`` leaves alone what the
    environment chose (``chosen_elsewhere``). Raises ``AllocatorError`` when ``choice`` is
    ``jemalloc`` and there is none, or the interpreter ignores ``PYTHONMALLOC``
    (``ignore_environment``: ``python -E`` or ``-I``; by default read off this one), or the
    second start still is not on it."""
    env = os.environ if environ is None else environ
    now = running() if now is None else now
    if choice == "system" or now == "jemalloc":
        return None
    if choice == "auto" and chosen_elsewhere(env) is not None:
        return None
    if sys.flags.ignore_environment if ignore_environment is None else ignore_environment:
        if choice == "jemalloc":
            raise AllocatorError(
                "allocator: jemalloc: this interpreter ignores PYTHONMALLOC (python -E or -I): "
                "start it without, or set allocator: system"
            )
        return None
    path = find_jemalloc() if library is None else library
    again = env.get(_RESTARTED) == "1"
    if path is None or again:
        if choice == "jemalloc":
            why = (
                f"started again with {path} preloaded and PYTHONMALLOC=malloc, and still not on "
                "it (the loader refused the library: see its message above)"
                if path is not None
                else f"no {JEMALLOC} in {', '.join(library_dirs())} "
                "(Debian and Ubuntu: apt-get install libjemalloc2)"
            )
            raise AllocatorError(f"allocator: jemalloc: {why}")
        return None
    return sys.executable, environment_for(path, env)


def settle(choice: str) -> None:
    """Start the process again on jemalloc if ``choice`` asks for it and it is not (never
    returns then); else go on as it is (the start-up line reads ``running()``).
    ``AllocatorError`` as ``restart_on``."""
    again = restart_on(choice)
    os.environ.pop(_RESTARTED, None)
    if again is None:
        return
    executable, env = again
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None where the descriptor was closed (``2>&-``)
            stream.flush()
    try:
        # The command line exactly as this process got it (``-m proxy run``, the console
        # script's path, interpreter options): the second start is the same command.
        os.execve(executable, sys.orig_argv, env)  # noqa: S606 - this program, argv as given
    except OSError as exc:
        if choice == "jemalloc":
            raise AllocatorError(f"allocator: jemalloc: cannot start again: {exc}") from exc
