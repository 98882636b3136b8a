"""Choosing the allocator before the proxy starts (``proxy.allocator``): where jemalloc is looked
for, how a process on it is told apart, and what a second start is given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.allocator import (
    JEMALLOC,
    MALLOC_CONF,
    AllocatorError,
    chosen_elsewhere,
    environment_for,
    find_jemalloc,
    library_dirs,
    restart_on,
    running,
)
from proxy.config import ConfigError, parse_settings

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def maps(tmp_path: Path, name: str, *libraries: str) -> str:
    """A ``/proc/self/maps`` stand-in, file ``name``, mapping ``libraries`` (and libc)."""
    lines = [f"7f00-7f10 r-xp 00000000 08:01 1 {lib}" for lib in ("/lib/libc.so.6", *libraries)]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_the_first_directory_holding_the_library_is_taken(tmp_path: Path) -> None:
    """Directories are tried in order; one without the file is passed over."""
    empty, first, second = (tmp_path / name for name in ("empty", "first", "second"))
    for directory in (empty, first, second):
        directory.mkdir()
    (first / JEMALLOC).write_bytes(b"")
    (second / JEMALLOC).write_bytes(b"")
    assert find_jemalloc([str(empty), str(first), str(second)]) == str(first / JEMALLOC)
    assert find_jemalloc([str(empty)]) is None


def test_multiarch_directories_come_first_this_machines_before_the_others(
    tmp_path: Path,
) -> None:
    """Under the root, the directories named for an architecture are tried first, this
    machine's before a foreign one; files and other directories are passed over."""
    machine = os.uname().machine
    for name in ("aaa-linux-gnu", f"{machine}-linux-gnu", "python3", "zzz-linux-gnueabihf"):
        (tmp_path / name).mkdir()
    (tmp_path / "bbb-linux-gnu").write_text("a file")
    dirs = library_dirs(str(tmp_path))
    root = str(tmp_path)
    assert dirs == [
        f"{root}/{machine}-linux-gnu",
        f"{root}/aaa-linux-gnu",
        f"{root}/zzz-linux-gnueabihf",
        "/usr/lib64",
        root,
        "/usr/local/lib",
    ]
    assert library_dirs(str(tmp_path / "missing"))[0] == "/usr/lib64"


def test_a_process_is_on_jemalloc_only_with_the_library_loaded_and_objects_handed_to_it(
    tmp_path: Path,
) -> None:
    """Loaded with CPython's arenas out of the way: jemalloc; loaded under CPython's own
    allocator, or without the library, or with no maps to read: system."""
    loaded, bare = maps(tmp_path, "loaded", LIB), maps(tmp_path, "bare", "/lib/libm.so.6")
    assert running(loaded, pymalloc=False) == "jemalloc"
    assert running(loaded, pymalloc=True) == "system"
    assert running(bare, pymalloc=False) == "system"
    assert running(str(tmp_path / "nothing"), pymalloc=False) == "system"


def test_without_maps_to_read_the_preload_asked_for_is_taken_at_its_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No /proc (a sandbox without it): jemalloc when LD_PRELOAD names it, else system."""
    nothing = str(tmp_path / "nothing")
    monkeypatch.setenv("LD_PRELOAD", f"/opt/other.so {LIB}")
    assert running(nothing, pymalloc=False) == "jemalloc"
    monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
    assert running(nothing, pymalloc=False) == "system"


def test_this_interpreter_is_read_as_on_its_own_arenas() -> None:
    """The suite runs on CPython's allocator: the interpreter's own reading says system."""
    assert running() == "system"


def test_the_second_start_preloads_the_library_first_and_keeps_the_rest() -> None:
    """LD_PRELOAD gets the library in front of what it held (once), PYTHONMALLOC=malloc, and
    MALLOC_CONF only where the environment has none; the other variables pass unchanged."""
    env = environment_for(LIB, {"LD_PRELOAD": f"/opt/a.so:{LIB} /opt/b.so", "HOME": "/h"})
    assert env["LD_PRELOAD"] == f"{LIB} /opt/a.so /opt/b.so"
    assert (env["PYTHONMALLOC"], env["MALLOC_CONF"], env["HOME"]) == ("malloc", MALLOC_CONF, "/h")
    assert environment_for(LIB, {"MALLOC_CONF": "narenas:2"})["MALLOC_CONF"] == "narenas:2"
    assert environment_for(LIB, {})["LD_PRELOAD"] == LIB
    assert environment_for(LIB, {"MALLOC_CONF": ""})["MALLOC_CONF"] == MALLOC_CONF


def test_auto_and_jemalloc_start_again_where_the_library_is_and_system_never_does() -> None:
    """A process on the system's allocator with the library at hand starts again for ``auto``
    and ``jemalloc`` (the same interpreter), never for ``system``; one already on jemalloc never."""
    for choice in ("auto", "jemalloc"):
        again = restart_on(choice, now="system", library=LIB, environ={})
        assert again is not None
        assert again[1]["LD_PRELOAD"] == LIB
    assert restart_on("system", now="system", library=LIB, environ={}) is None
    assert restart_on("auto", now="jemalloc", library=LIB, environ={}) is None


def test_without_the_library_auto_goes_on_and_jemalloc_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No libjemalloc.so.2 anywhere: ``auto`` stays on the system's allocator; ``jemalloc``
    is an error naming the file, the directories looked in and the package."""
    monkeypatch.setattr("proxy.allocator.find_jemalloc", lambda: None)
    assert restart_on("auto", now="system", environ={}) is None
    with pytest.raises(AllocatorError) as caught:
        restart_on("jemalloc", now="system", environ={})
    text = str(caught.value)
    assert JEMALLOC in text
    assert "/usr/lib" in text
    assert "apt-get install libjemalloc2" in text


def test_a_second_start_still_off_jemalloc_does_not_start_a_third() -> None:
    """The loader refused the library (the marker of a second start is set, and the process is
    still on the system's allocator): ``auto`` goes on, ``jemalloc`` is an error naming it."""
    marked = {"DEFENDER_PROXY_ALLOCATOR_RESTARTED": "1"}
    assert restart_on("auto", now="system", library=LIB, environ=marked) is None
    with pytest.raises(AllocatorError, match="still not on it"):
        restart_on("jemalloc", now="system", library=LIB, environ=marked)


def test_the_allocator_setting_takes_three_values_from_the_file_or_the_environment() -> None:
    """``allocator`` defaults to auto, is read from the file and from DEFENDER_PROXY_ALLOCATOR
    (which wins), and any other value is refused with the accepted ones named."""
    assert parse_settings({}, environ={}).allocator == "auto"
    assert parse_settings({"allocator": "System"}, environ={}).allocator == "system"
    variable = {"DEFENDER_PROXY_ALLOCATOR": "jemalloc"}
    assert parse_settings({"allocator": "system"}, environ=variable).allocator == "jemalloc"
    with pytest.raises(ConfigError) as caught:
        parse_settings({"allocator": "tcmalloc"}, environ={})
    assert "allocator" in str(caught.value)
    assert "auto, jemalloc, system" in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "chosen"),
    [
        ({"PYTHONMALLOC": "debug"}, "PYTHONMALLOC=debug"),
        ({"PYTHONMALLOC": "pymalloc_debug"}, "PYTHONMALLOC=pymalloc_debug"),
        ({"LD_PRELOAD": "/usr/lib/libmimalloc.so.2"}, "LD_PRELOAD names libmimalloc.so.2"),
        ({"LD_PRELOAD": "/a.so:/usr/lib/libc_malloc_debug.so.0"}, "libc_malloc_debug.so.0"),
    ],
)
def test_auto_leaves_what_the_environment_chose_and_jemalloc_overrides_it(
    environ: dict[str, str], chosen: str
) -> None:
    """A PYTHONMALLOC of the operator's own, or another allocator preloaded: ``auto`` goes on as
    it is; ``jemalloc`` starts again on jemalloc (put first) all the same."""
    found = chosen_elsewhere(environ)
    assert found is not None
    assert chosen in found
    assert restart_on("auto", now="system", library=LIB, environ=environ) is None
    again = restart_on("jemalloc", now="system", library=LIB, environ=environ)
    assert again is not None
    assert again[1]["LD_PRELOAD"].split()[0] == LIB


def test_nothing_chosen_elsewhere_when_the_preload_is_jemalloc_or_no_allocator() -> None:
    """PYTHONMALLOC=malloc, jemalloc itself preloaded, or libraries that are no allocator."""
    assert chosen_elsewhere({}) is None
    assert chosen_elsewhere({"PYTHONMALLOC": "malloc", "LD_PRELOAD": LIB}) is None
    assert chosen_elsewhere({"LD_PRELOAD": "/opt/libfaketime.so.1 /opt/libx.so"}) is None


def test_an_interpreter_that_ignores_the_environment_is_never_started_again() -> None:
    """Under python -E or -I PYTHONMALLOC has no effect: ``auto`` goes on without a second
    start, ``jemalloc`` is refused at once, saying why and what to do."""
    assert (
        restart_on("auto", now="system", library=LIB, environ={}, ignore_environment=True) is None
    )
    with pytest.raises(AllocatorError, match=r"python -E or -I.*allocator: system"):
        restart_on("jemalloc", now="system", library=LIB, environ={}, ignore_environment=True)
