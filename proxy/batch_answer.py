"""Graph JSON batching on the way out: the inner answers of a ``$batch``, read from the 200 answer
as it streams past, in bounded memory.

The answer (``{"responses": [{"id", "status", "headers", "body"}, …]}``, in any order) is relayed
to the caller chunk by chunk, unchanged and undelayed; each chunk is also fed to a ``Scanner``,
which hands back every inner answer whose object has closed: its id, status, ``Retry-After`` and
the first ``cap`` bytes of its body, raw, for the same classifier the outer answers go through.

Why a scanner of our own rather than a streaming JSON parser such as ijson: the proxy needs the
*raw bytes* of each inner body (up to the error-body cap) for ``classify``, and a guarantee that
no string, however long, is held whole — ijson builds every string value in full, and an inner
body of megabytes would be rebuilt as Python objects only to be thrown away. The scanner looks at
structure only down to the response objects and their ``headers``; below that it jumps from one
bracket or quote to the next with C-speed searches and copies at most ``cap`` bytes. What it
holds is bounded whatever the answer: a stack of at most four frames, strings of at most
``MAX_TEXT`` bytes, one body prefix of at most ``cap`` bytes. It is not a validator: an answer
that breaks the expected shape stops the scan (``failed``), never the relay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import orjson

#: Longest id, key or header value kept; longer ones are cut (and a cut key matches nothing).
MAX_TEXT: Final = 256
_WS: Final = frozenset(b" \t\r\n")
_SKIP: Final = re.compile(rb'["{}\[\]]')
_STRING: Final = re.compile(rb'["\\]')
_SCALAR_END: Final = re.compile(rb"[,}\]\s]")


@dataclass(slots=True)
class InnerAnswer:
    """One inner answer of a batch, as far as the proxy reads it."""

    id: str = ""
    status: int = 0
    retry_after: str | None = None
    #: the first ``cap`` bytes of the body's JSON text (a string body keeps its quotes)
    body: bytes = b""
    #: whether ``body`` is the whole body
    complete: bool = True


class Scanner:
    """Feed the answer's bytes in order; get the inner answers as they complete."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        #: [frame kind, what comes next] for the tracked levels: top, responses, response, headers
        self._stack: list[list[str]] = []
        self._started = False
        self._key = ""
        self._current = InnerAnswer()
        # the value being read: mode "", "skip", "string" or "scalar", and where it goes
        self._mode = ""
        self._target = ""
        self._text = bytearray()
        self._cut = False
        self._fresh = False
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._body: bytearray | None = None
        self.failed = False
        self.done = False

    def feed(self, data: bytes) -> list[InnerAnswer]:
        """Scan the next bytes of the answer; the inner answers completed in them."""
        found: list[InnerAnswer] = []
        i, n = 0, len(data)
        while i < n and not self.failed:
            if self._mode == "skip":
                i = self._skip(data, i)
            elif self._mode == "string":
                i = self._string(data, i)
            elif self._mode == "scalar":
                i = self._scalar(data, i)
            elif data[i] in _WS:
                i += 1
            else:
                i += self._structure(data[i], found)
        return found

    # Structure: the levels the proxy looks at.

    def _structure(self, c: int, found: list[InnerAnswer]) -> int:
        """Take byte ``c`` at a tracked level: 1 if consumed, 0 if a value starts at it."""
        if not self._stack:
            if self._started or c != ord("{"):
                self.failed = True
            else:
                self._started = True
                self._stack.append(["top", "key_or_end"])
            return 1
        frame = self._stack[-1]
        kind, expect = frame
        if kind == "responses":
            if c == ord("]") and expect != "value":
                self._stack.pop()
            elif expect == "comma_or_end":
                self._expect(c == ord(","), frame, "value")
            elif c == ord("{"):
                frame[1] = "comma_or_end"
                self._stack.append(["response", "key_or_end"])
                self._current = InnerAnswer()
            else:
                frame[1] = "comma_or_end"
                self._start_value(c, "")
                return 0
            return 1
        if expect in ("key_or_end", "comma_or_end") and c == ord("}"):
            self._stack.pop()
            if kind == "response":
                found.append(self._current)
            elif kind == "top":
                self.done = True
        elif expect in ("key_or_end", "key"):
            if self._expect(c == ord('"'), frame, "colon"):
                self._begin_text("key")
                self._mode = "string"
                return 0
        elif expect == "colon":
            self._expect(c == ord(":"), frame, "value")
        elif expect == "comma_or_end":
            self._expect(c == ord(","), frame, "key")
        else:
            frame[1] = "comma_or_end"
            return self._value_of(kind, c)
        return 1

    def _expect(self, ok: bool, frame: list[str], then: str) -> bool:
        if ok:
            frame[1] = then
        else:
            self.failed = True
        return ok

    def _value_of(self, kind: str, c: int) -> int:
        key = self._key
        if kind == "top" and key == "responses" and c == ord("["):
            self._stack.append(["responses", "value_or_end"])
            return 1
        if kind == "response" and key == "headers" and c == ord("{"):
            self._stack.append(["headers", "key_or_end"])
            return 1
        if kind == "response" and key in ("id", "status"):
            self._start_value(c, key)
        elif kind == "response" and key == "body":
            self._body = bytearray()
            self._current.complete = True
            self._start_value(c, "body")
        elif kind == "headers" and key.lower() == "retry-after":
            self._start_value(c, "retry")
        else:
            self._start_value(c, "")
        return 0

    def _start_value(self, c: int, target: str) -> None:
        """Begin a value at byte ``c``; ``feed`` reads it from ``c`` on (``c`` not consumed)."""
        self._target = target
        if target in ("id", "status", "retry") and c not in b"{[":
            self._begin_text(target)
            self._mode = "string" if c == ord('"') else "scalar"
            return
        self._mode = "skip"
        self._depth = 0
        self._in_string = False
        self._escaped = False
        if c not in b'{["':
            self._mode = "scalar"
            self._begin_text(target)

    # Values: a whole value skipped (its raw bytes kept for a body), a string, a scalar.

    def _skip(self, data: bytes, i: int) -> int:
        start, n = i, len(data)
        while i < n:
            if self._escaped:
                self._escaped = False
                i += 1
            elif self._in_string:
                m = _STRING.search(data, i)
                if m is None:
                    i = n
                elif data[m.start()] == ord("\\"):
                    self._escaped = True
                    i = m.start() + 1
                else:
                    self._in_string = False
                    i = m.start() + 1
                    if self._depth == 0:
                        return self._skipped(data, start, i)
            else:
                m = _SKIP.search(data, i)
                if m is None:
                    i = n
                    continue
                c = data[m.start()]
                i = m.start() + 1
                if c == ord('"'):
                    self._in_string = True
                elif c in b"{[":
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth <= 0:
                        return self._skipped(data, start, i)
        self._keep(data[start:n])
        return n

    def _skipped(self, data: bytes, start: int, end: int) -> int:
        self._keep(data[start:end])
        self._mode = ""
        if self._target == "body" and self._body is not None:
            self._current.body = bytes(self._body)
            self._body = None
        return end

    def _keep(self, part: bytes) -> None:
        body = self._body
        if body is None or self._target != "body":
            return
        room = self._cap - len(body)
        if len(part) > room:
            self._current.complete = False
        if room > 0:
            body += part[:room]

    def _string(self, data: bytes, i: int) -> int:
        if self._fresh:  # data[i] is the opening quote
            self._fresh = False
            i += 1
        n = len(data)
        while i < n:
            if self._escaped:
                self._escaped = False
                self._add(data[i : i + 1])
                i += 1
                continue
            m = _STRING.search(data, i)
            if m is None:
                self._add(data[i:])
                return n
            j = m.start()
            self._add(data[i:j])
            if data[j] == ord("\\"):
                self._escaped = True
                self._add(b"\\")
                i = j + 1
            else:
                self._finish_text(quoted=True)
                return j + 1
        return n

    def _scalar(self, data: bytes, i: int) -> int:
        m = _SCALAR_END.search(data, i)
        end = len(data) if m is None else m.start()
        self._add(data[i:end])
        if self._target == "body":
            self._keep(data[i:end])
        if m is not None:
            self._finish_text(quoted=False)
        return end

    def _begin_text(self, target: str) -> None:
        self._target = target
        self._text = bytearray()
        self._cut = False
        self._escaped = False
        self._fresh = True

    def _add(self, part: bytes) -> None:
        room = MAX_TEXT - len(self._text)
        if len(part) > room:
            self._cut = True
        if room > 0:
            self._text += part[:room]

    def _finish_text(self, quoted: bool) -> None:
        self._mode = ""
        raw = bytes(self._text)
        text = _decode(raw) if quoted else raw.decode("ascii", "replace")
        target = self._target
        if target == "key":
            self._key = "" if self._cut else text
        elif target == "id":
            self._current.id = text
        elif target == "status":
            self._current.status = int(text) if text.isdigit() and len(text) <= 3 else 0
        elif target == "retry":
            self._current.retry_after = text
        elif target == "body" and self._body is not None:
            self._current.body = bytes(self._body)
            self._body = None


def _decode(raw: bytes) -> str:
    try:
        text = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
    return text if isinstance(text, str) else ""
