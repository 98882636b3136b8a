"""The top-level key names of a JSON request body, read as the body streams: never its values.

A ``KeyCollector`` is fed the request body chunk by chunk, split anywhere (inside a string, a
``\\u`` escape or a UTF-8 character), while the body goes upstream untouched; ``result()`` says at
any moment what it has seen: the top-level object's key names, JSON-decoded (``"\\u0043omment"``
is ``Comment``, exactly as ``json.loads`` reads it), in order, each once, and the body's shape
(``object``, ``array``, ``scalar``, ``malformed``, ``empty``, or ``unread`` while nothing is
known). Only key names are kept: a value is skipped over as it streams, never held or decoded.

The scanner is written here rather than taken from a streaming parser. ijson's push interface on
yajl2_c was tried and measured; it does not fit a body that any caller shapes:

- yajl re-lexes an unfinished token from its start each time more input comes (lloyd/yajl#202,
  never merged), so a long value sent in small pieces costs quadratic time: a 128 KiB string in
  64-byte pieces took 0.2 s, a 1 MiB one some 13 s of the event loop;
- it decodes every value into a Python object (every string, every number as ``int`` or
  ``Decimal``) and holds a value's whole text until it ends, where only the keys are wanted;
- a number of more than 4,300 digits makes yajl2_c hand on an event with a NULL value, and
  reading it crashes the interpreter;
- some 0.5 µs per event: 0.5 s for a MiB of ``[[[[…``.

This scanner reads each byte once, in runs matched by ``re`` in C, and holds no more than the key
being read and the open brackets of a nested value (never a value's text). It checks the grammar of the top level exactly (a key, a colon, a value, a comma;
strings, numbers and ``true``/``false``/``null`` there) and of nested values only as far as
their strings and brackets: a valid body is never called malformed, and a malformed one is
found unless its error is inside a nested value. A top-level array or scalar is not read past its
first byte: its shape is all a hint needs.

What a body can cost is bounded, whatever it holds:

- ``MAX_SCAN`` (1 MiB): no byte past it is read. The bodies the API documents are small (an
  action's comment, a list of machine ids), the largest an import of at most 500 indicators, a
  few hundred KiB even with long descriptions; the body limit (``limits.max_body``, 32 MiB by
  default) is for uploads whose keys have long been read by then.
- ``MAX_STEPS`` (16,384 steps of the scanner, one per top-level token, run of brackets, or chunk):
  the cost follows the steps more than the bytes. A MiB of indicators is some 9,600 steps and
  25-45 ms; no body, however shaped or however finely chunked, costs more than some 60 ms on a
  shared 2-core VM (``bench/body_keys.py`` prints both).
- ``MAX_KEYS`` (256) distinct keys and ``MAX_KEY_TEXT`` (64 KiB of them, as sent).

Past any bound reading stops: the keys seen are kept, marked incomplete unless the object had
ended. ``feed``, ``finish`` and ``result`` never raise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

MAX_SCAN: Final = 2**20
MAX_STEPS: Final = 2**14
MAX_KEYS: Final = 256
MAX_KEY_TEXT: Final = 64 * 2**10

OBJECT: Final = "object"
ARRAY: Final = "array"
SCALAR: Final = "scalar"
MALFORMED: Final = "malformed"
EMPTY: Final = "empty"
#: nothing of the body read yet (the upstream answered first), or only blanks
UNREAD: Final = "unread"
#: Every shape a body can be found in.
SHAPES: Final = frozenset({OBJECT, ARRAY, SCALAR, MALFORMED, EMPTY, UNREAD})


@dataclass(frozen=True, slots=True)
class BodyKeys:
    """What a collector has seen of a body: its top-level keys, its shape, and whether the keys
    are all of them (the object's end was read, within the bounds, and the JSON held)."""

    keys: tuple[str, ...]
    shape: str
    complete: bool


# Where the scanner is. Top level: before the value, in the object (expecting a key or "}", a
# key after ",", the key itself, its ":", its value, "," or "}" after it), after the object.
# A member's value: a string, a number, a literal, or a nested value (its strings and brackets).
_BEFORE, _FIRST_KEY, _NEXT_KEY, _KEY, _COLON, _VALUE, _AFTER, _END = range(8)
_STRING, _NUMBER, _LITERAL, _NESTED, _NESTED_STRING, _STOPPED = range(8, 14)

_BLANKS: Final = re.compile(rb"[ \t\n\r]*")
# The rest of a string up to its closing quote, escapes included; a backslash that ends the chunk
# is left for the next (possessive quantifiers: each byte is looked at once).
_IN_STRING: Final = re.compile(rb'[^"\\]*+(?:\\[\s\S][^"\\]*+)*+')
# Inside a nested value: everything up to its next bracket, whole strings included, or up to a
# string the chunk ends in.
_IN_NESTED: Final = re.compile(rb'[^"\[\]{}]*+(?:"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+"[^"\[\]{}]*+)*+')
_OPENS: Final = re.compile(rb"[\[{]*")
_CLOSES: Final = re.compile(rb"[\]}]*")
_DIGITS: Final = re.compile(rb"[0-9]*")
# Each of these patterns matches the empty run, so its match is never None: typed as such once,
# here, for the scanner's hot loop.
_skip_nested: Callable[[bytes, int], re.Match[bytes]] = _IN_NESTED.match  # type: ignore[assignment]
_skip_opens: Callable[[bytes, int], re.Match[bytes]] = _OPENS.match  # type: ignore[assignment]
_skip_closes: Callable[[bytes, int], re.Match[bytes]] = _CLOSES.match  # type: ignore[assignment]
_OPENER: Final = {ord("]"): ord("["), ord("}"): ord("{")}
_CLOSERS: Final = frozenset(b"]}")
_CLOSE_TO_OPEN: Final = bytes.maketrans(b"]}", b"[{")
_DECODE: Final = re.compile(rb"[\\\x00-\x1f]")
_BOM: Final = b"\xef\xbb\xbf"
_LITERALS: Final = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}
_QUOTE, _BACKSLASH, _OPEN_OBJECT, _CLOSE_OBJECT, _OPEN_ARRAY, _COMMA, _COLON_BYTE = b'"\\{}[,:'
_NUMBER_START: Final = frozenset(b"-0123456789")

# A number's grammar (RFC 8259 §6) as states: after "-", after a leading "0", in the integer
# digits, after ".", in the fraction, after "e", after its sign, in the exponent.
_N_MINUS, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(8)
_N_DONE: Final = frozenset({_N_ZERO, _N_INT, _N_FRAC, _N_EXP})


class KeyCollector:
    """The top-level keys and the shape of one JSON body, fed as it streams."""

    __slots__ = (
        "_closed",
        "_cut",
        "_escape",
        "_head",
        "_key",
        "_key_text",
        "_keys",
        "_literal",
        "_mode",
        "_nest",
        "_number",
        "_scanned",
        "_shape",
        "_steps",
    )

    def __init__(self) -> None:
        self._keys: dict[str, None] = {}
        self._key_text = 0
        self._scanned = 0
        self._steps = 0
        self._mode = _BEFORE
        self._shape = UNREAD
        #: the top-level object ended
        self._closed = False
        #: reading stopped at a bound before the object ended
        self._cut = False
        #: the first bytes, held until it is known whether they are a UTF-8 byte order mark
        self._head = b""
        #: the key being read, as sent (escapes and all); never a value
        self._key = bytearray()
        #: a backslash ended the last chunk: the next byte is escaped
        self._escape = False
        #: the open brackets of the nested value being skipped
        self._nest = bytearray()
        self._number = _N_MINUS
        #: the rest of the literal being read (``ue`` of ``true``): the constant's, not the body's
        self._literal = b""

    def feed(self, chunk: bytes) -> None:
        """Read the next piece of the body."""
        if self._mode == _STOPPED or not chunk:
            return
        try:
            if self._mode == _BEFORE and self._scanned == 0:
                chunk = self._past_bom(chunk)
                if not chunk:
                    return
            room = MAX_SCAN - self._scanned
            if len(chunk) > room:
                chunk = chunk[:room]
            self._scanned += len(chunk)
            self._scan(chunk)
            if self._scanned >= MAX_SCAN and self._mode != _STOPPED:
                self._stop()
        except Exception:
            # Not expected: the scanner handles every byte. A bug here must not fail a request.
            self._fail()

    def finish(self) -> None:
        """The body ended."""
        try:
            if self._head:
                head, self._head = self._head, b""
                self._scanned = len(head)
                self._scan(head)
            mode = self._mode
            if mode == _STOPPED:
                return
            if mode == _BEFORE:
                self._shape = EMPTY if self._scanned == 0 else MALFORMED
                self._stop()
            elif mode == _END:
                self._stop()
            else:
                self._fail()  # the object did not end
        except Exception:
            self._fail()

    def result(self) -> BodyKeys:
        """What has been seen so far."""
        complete = self._shape == OBJECT and self._closed and not self._cut
        return BodyKeys(tuple(self._keys), self._shape, complete)

    def _past_bom(self, chunk: bytes) -> bytes:
        head = self._head + chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = b""
        # json.loads and .NET's readers both skip a UTF-8 byte order mark.
        if head.startswith(_BOM):
            self._scanned = len(_BOM)
            return head[len(_BOM) :]
        return head

    def _scan(self, buf: bytes) -> None:
        """Read ``buf`` from where the last chunk left off."""
        pos, end = 0, len(buf)
        if self._escape:
            self._escape = False
            if self._mode == _KEY:
                self._key.append(buf[0])
            pos = 1
        nest = self._nest
        while pos < end:
            self._steps += 1
            if self._steps > MAX_STEPS:
                self._stop()
                return
            mode = self._mode
            if mode == _NESTED:
                # The commonest step, so its usual cases are here rather than in a call.
                pos = _skip_nested(buf, pos).end()
                if pos >= end:
                    return
                byte = buf[pos]
                if byte == _QUOTE:
                    self._mode = _NESTED_STRING
                    pos += 1
                elif byte in (_OPEN_OBJECT, _OPEN_ARRAY):
                    run = _skip_opens(buf, pos).end()
                    nest += buf[pos:run]
                    pos = run
                elif nest[-1] == _OPENER[byte] and (pos + 1 == end or buf[pos + 1] not in _CLOSERS):
                    nest.pop()
                    pos += 1
                    if not nest:
                        self._mode = _AFTER
                else:
                    pos = self._closes(buf, pos, end)
                continue
            if mode in (_STRING, _NESTED_STRING, _KEY):
                pos = self._string(buf, pos, end)
            elif mode == _NUMBER:
                pos = self._number_at(buf, pos, end)
            elif mode == _LITERAL:
                pos = self._literal_at(buf, pos, end)
            else:
                pos = _skip(_BLANKS, buf, pos)
                if pos < end:
                    self._token(buf[pos])
                    pos += 1
            if self._mode == _STOPPED:
                return

    def _token(self, byte: int) -> None:
        """One byte of the top level's grammar, past the blanks."""
        mode = self._mode
        if mode == _VALUE:
            self._value(byte)
        elif mode == _AFTER:
            if byte == _COMMA:
                self._mode = _NEXT_KEY
            elif byte == _CLOSE_OBJECT:
                self._mode, self._closed = _END, True
            else:
                self._fail()
        elif mode == _COLON:
            if byte == _COLON_BYTE:
                self._mode = _VALUE
            else:
                self._fail()
        elif mode in (_FIRST_KEY, _NEXT_KEY):
            if byte == _QUOTE:
                self._mode = _KEY
                self._key.clear()
            elif byte == _CLOSE_OBJECT and mode == _FIRST_KEY:
                self._mode, self._closed = _END, True
            else:
                self._fail()
        elif mode == _BEFORE:
            if byte == _OPEN_OBJECT:
                self._shape, self._mode = OBJECT, _FIRST_KEY
            else:
                # Not an object: its kind is all a hint says, so nothing more of it is read.
                if byte == _OPEN_ARRAY:
                    self._shape = ARRAY
                elif byte == _QUOTE or byte in _NUMBER_START or byte in _LITERALS:
                    self._shape = SCALAR
                else:
                    self._shape = MALFORMED
                self._stop()
        else:  # _END: only blanks may follow the object
            self._fail()

    def _value(self, byte: int) -> None:
        """The first byte of a member's value."""
        if byte == _QUOTE:
            self._mode = _STRING
        elif byte in (_OPEN_OBJECT, _OPEN_ARRAY):
            self._mode = _NESTED
            self._nest.append(byte)
        elif byte in _NUMBER_START:
            self._mode = _NUMBER
            self._number = _N_MINUS if byte == ord("-") else _N_ZERO if byte == ord("0") else _N_INT
        elif byte in _LITERALS:
            self._mode, self._literal = _LITERAL, _LITERALS[byte][1:]
        else:
            self._fail()

    def _string(self, buf: bytes, pos: int, end: int) -> int:
        """Inside a string: up to its closing quote, or the end of ``buf``."""
        stop = _skip(_IN_STRING, buf, pos)
        mode = self._mode
        if mode == _KEY:
            if len(self._key) + stop - pos + 2 > MAX_KEY_TEXT - self._key_text:
                self._stop()
                return end
            self._key += buf[pos:stop]
        if stop >= end:
            return end
        if buf[stop] == _BACKSLASH:  # the chunk's last byte: the escaped one comes next
            self._escape = True
            if mode == _KEY:
                self._key.append(_BACKSLASH)
            return end
        if mode == _KEY:
            self._key_done()
        elif mode == _NESTED_STRING:
            self._mode = _NESTED
        else:
            self._mode = _AFTER
        return stop + 1

    def _key_done(self) -> None:
        raw = bytes(self._key)
        self._key.clear()
        try:
            text = raw.decode("utf-8", "surrogatepass")
            # With an escape or a control character, the decoding json.loads gives a UTF-8 body
            # (which refuses control characters); without, the text is the key.
            key = json.loads(f'"{text}"') if _DECODE.search(raw) else text
        except ValueError:
            self._fail()
            return
        self._mode = _COLON
        if key in self._keys:
            return
        if len(self._keys) >= MAX_KEYS:
            self._stop()
            return
        self._keys[key] = None
        self._key_text += len(raw)

    def _closes(self, buf: bytes, pos: int, end: int) -> int:
        """A run of closing brackets in a nested value (or one that does not match)."""
        run = _skip_closes(buf, pos).group()
        # A run may close the nested value and go on to close the object: those are the top's.
        count = min(len(run), len(self._nest))
        if not count or run[:count][::-1].translate(_CLOSE_TO_OPEN) != self._nest[-count:]:
            self._fail()
            return end
        del self._nest[-count:]
        if not self._nest:
            self._mode = _AFTER
        return pos + count

    def _number_at(self, buf: bytes, pos: int, end: int) -> int:
        """Inside a number: its grammar checked as it goes, its digits never kept."""
        state = self._number
        while pos < end:
            byte = buf[pos]
            if state in (_N_INT, _N_FRAC, _N_EXP) and 0x30 <= byte <= 0x39:
                pos = _skip(_DIGITS, buf, pos)
                continue
            digit = 0x30 <= byte <= 0x39
            if state == _N_MINUS and digit:
                state = _N_ZERO if byte == 0x30 else _N_INT
            elif state in (_N_ZERO, _N_INT) and byte == ord("."):
                state = _N_DOT
            elif state in (_N_ZERO, _N_INT, _N_FRAC) and byte in b"eE":
                state = _N_E
            elif state == _N_DOT and digit:
                state = _N_FRAC
            elif state == _N_E and byte in b"+-":
                state = _N_ESIGN
            elif state in (_N_E, _N_ESIGN) and digit:
                state = _N_EXP
            elif state in _N_DONE:
                self._mode = _AFTER
                return pos
            else:
                self._fail()
                return end
            pos += 1
        self._number = state
        return end

    def _literal_at(self, buf: bytes, pos: int, end: int) -> int:
        """Inside ``true``, ``false`` or ``null``."""
        want = self._literal
        got = buf[pos : pos + len(want)]
        if not want.startswith(got):
            self._fail()
            return end
        self._literal = want[len(got) :]
        if not self._literal:
            self._mode = _AFTER
        return pos + len(got)

    def _stop(self) -> None:
        """Read no more of this body: keep what was seen."""
        self._cut = self._cut or not self._closed
        self._mode = _STOPPED
        self._key.clear()
        self._nest.clear()

    def _fail(self) -> None:
        self._stop()
        self._shape = MALFORMED


def _skip(pattern: re.Pattern[bytes], buf: bytes, pos: int) -> int:
    """Where a run of ``pattern`` (which may match nothing) starting at ``pos`` ends."""
    match = pattern.match(buf, pos)
    return pos if match is None else match.end()
