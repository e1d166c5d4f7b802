"""JSON text written by orjson, with the standard library for what orjson refuses.

orjson is several times faster than ``json.dumps`` on the large values the service writes (a stored registry
snapshot, a SendGrid request of a thousand personalizations). It refuses integers beyond 64 bits, lone
surrogates and keys that are not strings; ``json.dumps`` writes those (ASCII-escaped). Either way the text is
compact or standard JSON that any reader parses to the same value; nothing hashes ``dumps``'s text.

``canonical`` is different: its text is hashed (content hashes, fingerprints) and stored, so it must stay the
very text ``json.dumps`` wrote, byte for byte, or every stored hash would change once.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson


def dumps(value: Any) -> bytes:
    """``value`` as UTF-8 JSON bytes (never longer than ``json.dumps``'s ASCII-escaped output)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode("utf-8")


_LEAVES: Final = frozenset({str, int, bool, type(None)})


def _written_alike(value: Any) -> bool:
    """Would orjson write ``value`` exactly as ``json.dumps`` does? Only plain JSON types (a subclass, a
    date, a dataclass: the standard library decides, as it always did), and no float the two write
    differently: outside 1e-4 <= |x| < 1e16 Python writes an exponent (1e-05, 1e+16) where orjson may not
    (0.00001), and NaN/inf as NaN/Infinity where orjson writes null. Inside, both write the shortest
    round-tripping digits the same way (tests/test_jsontext.py)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif kind is float:
            if item != 0.0 and not 1e-4 <= abs(item) < 1e16:
                return False
        elif kind not in _LEAVES:
            return False
    return True


def canonical(value: Any) -> str:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``: the same text, written
    by orjson (twice as fast on a registry record, walk included) where it writes exactly that, and by the
    standard library otherwise (unusual floats, what orjson refuses: big integers, lone surrogates, keys
    that are not strings, types it does not know)."""
    if _written_alike(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
