"""Text from users and files that reaches names and terminals: what a specimen name may hold,
and how anything printed is kept from steering the terminal.

A name is shown in tables, URLs and folder names: a control character would split a line of
`list` or send an escape sequence to whoever reads it, and `.`/`..` are not reachable as a
path segment."""

from __future__ import annotations

import re

MAX_NAME = 200
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# C0/C1 controls and DEL, line/paragraph separators, and the bidirectional overrides and
# isolates that reorder what a reader sees (Trojan Source)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def name_problem(name: str) -> str | None:
    """Why a specimen name is refused, or None when it is fine."""
    if not name.strip():
        return "a specimen name cannot be empty"
    if len(name) > MAX_NAME:
        return f"a specimen name can have at most {MAX_NAME} characters, not {len(name)}"
    if "/" in name or "\\" in name:
        return f"specimen names cannot contain slashes: '{escaped(name, keep='')}'"
    if name.strip() in (".", ".."):
        return f"a specimen cannot be named {name.strip()!r} (it is not reachable as a web page)"
    if UUID.match(name.strip()):
        return f"a specimen name cannot look like a uuid ({name.strip()}): a uuid names a specimen already"
    if _CONTROL.search(name):
        return (f"specimen names cannot contain control characters (line breaks, tabs, escape "
                f"sequences): '{escaped(name, keep='')}'")
    return None


def one_line(value) -> str:
    """A value (a file or specimen name, a metadata value) shown inside a line: every control
    character made visible, line breaks and tabs included, so it cannot forge a line."""
    return escaped(str(value), keep="")


def escaped(text: str, keep: str = "\n") -> str:
    """Text with every control character (but those in `keep`) written as a visible escape
    such as \\x1b or \\u202e."""
    def visible(match: re.Match) -> str:
        ch = match.group()
        if ch in keep:
            return ch
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
    return _CONTROL.sub(visible, text)
