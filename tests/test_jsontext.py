"""alerts.jsontext: orjson's text, and json's for what orjson refuses; both read back as the value. The
canonical text (hashed, stored) is the standard library's, byte for byte, whoever writes it."""

from __future__ import annotations

import json
import math
import random
import struct
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerts import jsontext
from alerts.jsontext import dumps

FIXTURES = Path(__file__).parent / "fixtures" / "ctgov"


def test_compact_utf8_from_orjson() -> None:
    assert dumps({"title": "Études", "n": [1, 2.5, None, True]}) == '{"title":"Études","n":[1,2.5,null,true]}'.encode()


def test_what_orjson_refuses_is_written_by_json() -> None:
    for value in ({"n": 2**70}, {"half a pair": "\ud83d"}, {1: "a key that is not a string"}):
        text = dumps(value)
        assert text == json.dumps(value).encode()
        assert json.loads(text) == json.loads(json.dumps(value))


def _stdlib(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_canonical_text_is_the_standard_librarys_for_every_registry_record() -> None:
    """Content hashes and fingerprints are stored: the text they hash must not change with the writer."""
    records = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("**/*.json"))]
    assert len(records) > 100
    for record in records:
        assert jsontext.canonical(record) == _stdlib(record)


def test_canonical_text_is_the_standard_librarys_for_any_float_and_any_character() -> None:
    rng = random.Random(20261129)
    floats = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(20_000)]
    floats += [rng.uniform(-1, 1) * 10 ** rng.uniform(-6, 18) for _ in range(20_000)]
    floats += [1e-5, 1e-4, 0.0001, 9.999e-5, 1e15, 1e16, 1e22, -0.0, 0.0, 5e-324, math.inf, -math.inf, math.nan]
    text = "".join(chr(i) for i in range(0xD800)) + "\ue000\uffff\U0001f600"
    values: list[Any] = [
        floats,
        {"k": text, text[:40]: 1, "\u00e9": [1.5, (2.25, None)], "e": True},
        [2**64, -(2**70)],  # beyond 64 bits: orjson refuses, the standard library writes them
        {"lone": "\ud800"},  # a lone surrogate: the same
        {1: "int key"},
        OrderedDict(b=1, a=0.00001),  # a dict subclass holding a float orjson would write otherwise
    ]
    for value in values:
        assert jsontext.canonical(value) == _stdlib(value)


def test_canonical_refuses_what_the_standard_library_refuses() -> None:
    for value in ({"when": datetime.now(UTC)}, {"id": uuid.uuid4()}, {1, 2}):
        with pytest.raises(TypeError):
            jsontext.canonical(value)
