"""Text the service can store, show and send: the check every input path applies at its boundary.

A NUL byte cannot be stored by PostgreSQL (and means nothing in a name or an address); a lone surrogate
("\\udcff", which JSON's ``\\u`` escapes can produce) cannot even be encoded as UTF-8, so it breaks
whatever tries to write it out: the database driver, a JSON answer, a log line. Both are refused where
they come in, with a message that names the problem without repeating the text.
"""

from __future__ import annotations

import re
from typing import Final

# C0 controls except tab, line feed and carriage return (which forms and pasted text legitimately carry),
# and DEL.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")

CONTROL_MESSAGE: Final = "contains a control character (such as a NUL byte), which we can't accept"
SURROGATE_MESSAGE: Final = "contains invalid Unicode (a lone surrogate), which we can't accept"


def problem(text: str) -> str | None:
    """Why ``text`` cannot be accepted, or None when it can."""
    if _SURROGATE.search(text):
        return SURROGATE_MESSAGE
    if _CONTROL.search(text):
        return CONTROL_MESSAGE
    return None


def check(text: str) -> str:
    """``text`` unchanged, or ValueError naming the problem (never echoing the text)."""
    reason = problem(text)
    if reason is not None:
        raise ValueError(reason)
    return text


def escaped(text: str) -> str:
    """Control characters and lone surrogates as ``\\xNN`` / ``\\udcff`` escapes: safe to store, log, show."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
