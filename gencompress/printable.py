"""Names and paths as they are printed: control characters escaped.

A model file, a layer or a folder may be named with a newline, a carriage return or a terminal
escape sequence. Printed raw, such a name splits a table row, forges a log line
(``x\\ngencompress: error: ...``) or recolours the terminal. Every name and path that reaches
the terminal or a log line goes through ``printable``: control characters (Unicode category
Cc), line and paragraph separators and the bidirectional overrides that reorder what a reader
sees come out as Python-style escapes (``\\n``, ``\\x1b``, ``\\u202e``). The files a run writes
keep their real names; ``report.json`` holds them as they are (JSON escapes them itself).
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Not category Cc, but they break or reorder lines as a reader sees them.
_FORMAT_CONTROLS = set("\u2028\u2029\u200e\u200f\u061c") | {chr(c) for c in range(0x202A, 0x202F)} | {chr(c) for c in range(0x2066, 0x206A)}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text) -> str:
    """``text`` (any object, as ``str``) with every control character escaped: one line, as read."""
    text = str(text)
    if text.isprintable():  # the usual case: nothing to escape (spaces are printable)
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) == "Cc" or ch in _FORMAT_CONTROLS else ch for ch in text)
