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

# C0 controls except TAB, DEL, C1 controls, lone surrogates (from surrogateescape decoding),
# and the Unicode bidi overrides / isolates that can make a line read differently than it is.
_BAD = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


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
