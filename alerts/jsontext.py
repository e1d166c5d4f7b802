"""JSON text written by orjson, with the standard library for what orjson refuses.

orjson is several times faster than ``json.dumps`` on the large values the service writes (a stored registry
snapshot, a SendGrid request of a thousand personalizations). It refuses integers beyond 64 bits, lone
surrogates and keys that are not strings; ``json.dumps`` writes those (ASCII-escaped). Either way the text is
compact or standard JSON that any reader parses to the same value; nothing hashes it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """``value`` as UTF-8 JSON bytes (never longer than ``json.dumps``'s ASCII-escaped output)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode("utf-8")
