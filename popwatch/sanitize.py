"""The one gate for untrusted text.

Anything that came from a log line (usernames, reverse-DNS names, ident strings, the raw
line itself) passes through :func:`clean` exactly once, at parse time, before any other
layer sees it. After that the text is safe to print to a terminal as *plain text*: it holds
no C0/C1 control characters, no ESC, no DEL, no NUL, no lone surrogates, and it is capped.

It is *not* safe as markup: the UI still renders it with ``rich.text.Text`` or markup off.
"""

from __future__ import annotations

import re

#: default caps, in characters
LINE_CAP = 2048
FIELD_CAP = 128

# C0 controls except TAB, DEL, C1 controls (NEL included), lone surrogates (from surrogateescape
# decoding), the Unicode line and paragraph separators (U+2028, U+2029: a new line in some
# terminals and viewers, they misalign tables), and the bidi marks, embeddings, overrides and
# isolates that can make a line read differently than it is (U+061C, U+200E, U+200F,
# U+202A-U+202E, U+2066-U+2069).
_BAD = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u2028\u2029"
                  "\u202a-\u202e\u2066-\u2069]")
_BAD_OUT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u2028\u2029"
                      "\u202a-\u202e\u2066-\u2069]")


def _esc(m: re.Match[str]) -> str:
    c = ord(m.group())
    if c <= 0xFF:
        return f"\\x{c:02x}"
    return f"\\u{c:04x}"


def decode(raw: bytes) -> str:
    """Bytes from a log -> str, invalid UTF-8 replaced by U+FFFD (never raises)."""
    return raw.decode("utf-8", "replace")


def clean(text: str | bytes | None, cap: int = LINE_CAP) -> str:
    """Make untrusted text printable and bounded.

    Control characters become visible escapes (``\\x1b``), so an attacker's ESC sequence
    shows as text and never reaches the terminal. Text longer than ``cap`` is cut and marked
    with ``…[+N]`` (N = characters dropped).
    """
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = decode(text)
    over = len(text) - cap
    if over > 0:
        text = text[:cap]
    if _BAD.search(text) is not None:
        text = _BAD.sub(_esc, text)
    # TAB is harmless to the terminal but breaks column layout.
    if "\t" in text:
        text = text.replace("\t", " ")
    if over > 0:
        text = f"{text}…[+{over}]"
    return text


def clean_field(text: str | bytes | None, cap: int = FIELD_CAP) -> str:
    """A short field (username, hostname): same rules, smaller cap."""
    return clean(text, cap)


def is_clean(text: str) -> bool:
    """True when ``text`` holds nothing :func:`clean` would escape (used by tests and asserts)."""
    return _BAD.search(text) is None and "\t" not in text


class SafeStream:
    """A text stream for the command line's stdout/stderr: every line written passes the same
    rules as :func:`clean` (newlines kept, each line capped at ``cap``), so no path of any
    command can put a raw control character, bidi control or line separator on a terminal."""

    def __init__(self, raw, cap: int) -> None:
        self._raw = raw
        self._cap = cap

    def write(self, text: str) -> int:
        if _BAD_OUT.search(text) is not None or (self._cap and len(text) > self._cap):
            lines = text.split("\n")
            text = "\n".join(_out_line(line, self._cap) for line in lines)
        return self._raw.write(text)

    def __getattr__(self, name: str):  # flush, fileno, isatty, encoding, buffer...
        return getattr(self._raw, name)


def _out_line(line: str, cap: int) -> str:
    over = len(line) - cap if cap else 0
    if over > 0:
        line = line[:cap]
    line = _BAD_OUT.sub(_esc, line)
    return f"{line}…[+{over}]" if over > 0 else line


def guard_std_streams(*, stdout_cap: int = 0, stderr_cap: int = 400) -> None:
    """Route sys.stdout and sys.stderr through :class:`SafeStream` (the CLI, not the TUI).
    stderr lines are capped: an error that echoes a 5,000-character input stays one short line."""
    import sys

    if not isinstance(sys.stdout, SafeStream) and sys.stdout is not None:
        sys.stdout = SafeStream(sys.stdout, stdout_cap)
    if not isinstance(sys.stderr, SafeStream) and sys.stderr is not None:
        sys.stderr = SafeStream(sys.stderr, stderr_cap)
