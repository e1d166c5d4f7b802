"""alerts.watch.records: a registry record's identity, hash and events."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from alerts.events import canonical_json, parse_event
from alerts.watch.records import RegistryRecord
from tests.conftest import FIXTURES

STUDIES = sorted((FIXTURES / "ctgov" / "studies").glob("*.json"))


def _load(path: Any) -> Any:
    from alerts.ctgov.client import loads

    return loads(path.read_bytes())


@pytest.mark.parametrize("path", STUDIES[:40], ids=lambda p: p.stem)
def test_an_events_text_reuses_the_records_text_byte_for_byte(path: Any) -> None:
    record = RegistryRecord.of(_load(path))
    for payload in (
        record.changed_event("2026-11-29T10:00:00Z"),
        record.new_trial_event("2026-11-29T10:00:00Z", 'Héllo "trial":null, \u2028 condition'),
    ):
        assert record.canonical_event(payload) == canonical_json(payload)


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["protocolSection"]["identificationModule"].update(briefTitle="lone \ud800 surrogate"),
        lambda r: r["protocolSection"].update(odd=1e-7),
        lambda r: r["protocolSection"].update(big=2**70),
        lambda r: r["protocolSection"].update(nan=float("nan")),
        lambda r: r["protocolSection"].update(nested={"trial": None, "x": [1.5, None, True]}),
    ],
)
def test_unusual_records_get_the_same_text_or_none(edit: Any) -> None:
    raw = copy.deepcopy(_load(STUDIES[0]))
    edit(raw)
    record = RegistryRecord.of(raw)
    payload = record.changed_event("2026-11-29T10:00:00Z")
    reused = record.canonical_event(payload)
    try:
        whole = canonical_json(payload)
    except (TypeError, ValueError):
        assert reused is None
    else:
        assert reused in (None, whole)


def test_a_payload_that_is_not_the_records_own_is_written_whole() -> None:
    record = RegistryRecord.of(_load(STUDIES[0]))
    payload = record.changed_event("2026-11-29T10:00:00Z")
    assert record.canonical_event({**payload, "trial": copy.deepcopy(record.record)}) is None
    assert record.canonical_event({**payload, "extra": {"trial": None}}) is None


def test_parse_event_with_the_reused_text_is_parse_event() -> None:
    record = RegistryRecord.of(_load(STUDIES[0]))
    payload = record.changed_event("2026-11-29T10:00:00Z")
    assert parse_event(payload, serialized=record.canonical_event(payload)) == parse_event(payload)
