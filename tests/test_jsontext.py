"""alerts.jsontext: orjson's text, and json's for what orjson refuses; both read back as the value."""

from __future__ import annotations

import json

from alerts.jsontext import dumps


def test_compact_utf8_from_orjson() -> None:
    assert dumps({"title": "Études", "n": [1, 2.5, None, True]}) == '{"title":"Études","n":[1,2.5,null,true]}'.encode()


def test_what_orjson_refuses_is_written_by_json() -> None:
    for value in ({"n": 2**70}, {"half a pair": "\ud83d"}, {1: "a key that is not a string"}):
        text = dumps(value)
        assert text == json.dumps(value).encode()
        assert json.loads(text) == json.loads(json.dumps(value))
