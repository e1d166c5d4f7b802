"""The check every input path applies: NUL and other control characters, lone surrogates."""

from __future__ import annotations

import pytest

from alerts import text


@pytest.mark.parametrize("value", ["liver\x00failure", "\x1b[31m", "a\x7fb", "\udcff", "ok \ud800 no"])
def test_unacceptable_text_is_named_without_being_repeated(value: str) -> None:
    reason = text.problem(value)
    assert reason is not None and "can't accept" in reason
    with pytest.raises(ValueError) as info:
        text.check(value)
    assert value not in str(info.value)
    escaped = text.escaped(value)
    escaped.encode("utf-8")  # storable and printable
    assert "\\" in escaped


@pytest.mark.parametrize("value", ["Crohn's disease", "Maladie de Crohn", "克罗恩病", "line\nbreak\tand tab", "😀"])
def test_ordinary_text_passes(value: str) -> None:
    assert text.problem(value) is None
    assert text.check(value) == value == text.escaped(value)
