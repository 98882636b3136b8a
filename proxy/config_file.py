"""Reading the YAML config file: bounded in size and in what its aliases stand for.

``proxy.config`` imports this module only when there is a file to read (``--config`` or
``DEFENDER_PROXY_CONFIG``), so a proxy on its embedded defaults never loads PyYAML. Every way a
file can fail to be read or parsed becomes one problem line, prefixed with the file's path, in the
list of problems that ``proxy.config`` reports together.
"""

from __future__ import annotations

import os
import stat
from typing import Final

import yaml

from proxy.units import format_size, shown

#: The largest config file read, in bytes. A table of 1,000 routes takes about 100 KiB; a YAML
#: parser takes seconds per MiB, which a reload spends while the proxy serves.
MAX_FILE: Final = 1 << 20
#: How many YAML nodes the aliases of one file may stand for in all, counted as if each alias were
#: written out: a few lines of nested aliases ("billion laughs") stand for billions.
MAX_ALIASED: Final = 100_000


class _UnreadableError(Exception):
    """A path that names no regular file of at most ``MAX_FILE`` bytes."""


def _read(path: str) -> str:
    """The text of the config file at ``path``; never blocks on a FIFO or reads past the bound."""
    # Without O_NONBLOCK, opening a FIFO waits for a writer: a start or reload that never ends.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    # Checked before fdopen, which raises on a directory and leaves the descriptor open.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _UnreadableError("not a regular file")
    with os.fdopen(fd, "rb") as file:
        raw = file.read(MAX_FILE + 1)
    if len(raw) > MAX_FILE:
        raise _UnreadableError(f"it is over the limit of {format_size(MAX_FILE)}")
    return raw.decode("utf-8")


def _expanded(node: yaml.Node, most: int) -> int:
    """How many nodes ``node`` stands for written out, counted up to just past ``most``; a node
    that contains itself counts once."""
    count = 0
    inside: set[int] = set()
    todo: list[tuple[yaml.Node, bool]] = [(node, True)]
    while todo and count <= most:
        item, entering = todo.pop()
        if not entering:
            inside.discard(id(item))
            continue
        if id(item) in inside:
            continue
        count += 1
        if isinstance(item, yaml.SequenceNode):
            children = list(item.value)
        elif isinstance(item, yaml.MappingNode):
            children = [child for pair in item.value for child in pair]
        else:
            continue
        inside.add(id(item))
        todo.append((item, False))
        todo.extend((child, True) for child in children)
    return count


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a document whose aliases stand for more than
    ``MAX_ALIASED`` nodes: validation walks what they stand for, as often as they occur."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliased = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            node = self.anchors.get(event.anchor)
            if node is not None:
                self._aliased += _expanded(node, MAX_ALIASED - self._aliased)
                if self._aliased > MAX_ALIASED:
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"its aliases stand for more than {MAX_ALIASED:,} values",
                        event.start_mark,
                    )
        return super().compose_node(parent, index)


def read_document(path: str, problems: list[str]) -> object:
    """The YAML document of the file at ``path`` (None if it cannot be had); why not, if so, is
    appended to ``problems``."""
    try:
        return yaml.load(_read(path), Loader=_Loader)  # noqa: S506 - a safe loader, bounded
    except _UnreadableError as error:
        problems.append(f"{path}: cannot read the config file: {error}")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        problems.append(f"{path}: cannot read the config file: {reason}")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        problems.append(f"{path}: invalid YAML{where}: {reason}")
    except RecursionError:
        problems.append(f"{path}: invalid YAML: nested too deeply")
    except Exception as error:
        # The loader's constructors raise whatever they happen to on a value they cannot build:
        # ValueError for a date that does not exist (2024-02-30) or an integer past Python's
        # digit limit, IndexError for `!!float ''`, AttributeError for `!!timestamp ''`.
        reason = shown(str(error)) if str(error) else type(error).__name__
        problems.append(f"{path}: invalid YAML: a value cannot be read: {reason}")
    return None
