"""What the watcher makes of one registry record (pure): its identity, dates, content hash and events.

Event ids are deterministic - the NCT ID, the record's LastUpdatePostDate and a hash of its content - so a
pass repeated, overlapping the last one by a day, or resumed after a kill publishes nothing twice: the
intake answers ``duplicate`` for an id it has seen.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

from alerts import ctgov
from alerts.events import NEW_TRIAL_FOR_CONDITION, TRIAL_CHANGED, canonical_json

SOURCE: Final = "watch"  # RejectedEvent.source of records that failed validation
_NCT: Final = re.compile(r"^NCT\d{8}$")


def _get(record: Any, *path: str) -> Any:
    for key in path:
        record = record.get(key) if isinstance(record, Mapping) else None
    return record


def _date(value: Any) -> date | None:
    """A registry date ("2026-11-27", or partial "2026-11" / "2026") as the earliest day it can mean."""
    if not isinstance(value, str):
        return None
    parts = value.strip().split("-")
    try:
        numbers = [int(p) for p in parts[:3]] + [1] * (3 - min(len(parts), 3))
        return date(numbers[0], numbers[1], numbers[2])
    except (ValueError, IndexError):
        return None


def first_posted(record: Any) -> date | None:
    """The day the registry first posted the record (StudyFirstPostDate), or None when it does not say."""
    return _date(_get(record, "protocolSection", "statusModule", "studyFirstPostDateStruct", "date"))


@dataclass(frozen=True)
class RegistryRecord:
    record: Any  # as received: usually a dict, but a broken registry can send anything
    nct_id: str | None  # None when the record has no well-formed NCT ID
    content_hash: str
    last_update: str | None  # LastUpdatePostDate as sent
    last_update_day: date | None
    first_posted: date | None
    # The record's canonical JSON (hashed above), kept to write its events' text without writing it again.
    content: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, record: Any) -> RegistryRecord:
        nct = _get(record, "protocolSection", "identificationModule", "nctId")
        last = _get(record, "protocolSection", "statusModule", "lastUpdatePostDateStruct", "date")
        content: str | None
        try:
            content = canonical_json(record)
        except (TypeError, ValueError):
            content = None
        hashed = content if content is not None else repr(record)
        return cls(
            record=record,
            nct_id=nct if isinstance(nct, str) and _NCT.match(nct) else None,
            content_hash=hashlib.sha256(hashed.encode("utf-8", "replace")).hexdigest(),
            last_update=last if isinstance(last, str) else None,
            last_update_day=_date(last),
            first_posted=first_posted(record),
            content=content,
        )

    def canonical_event(self, payload: Mapping[str, Any]) -> str | None:
        """``canonical_json(payload)`` for one of this record's events, the record's part taken from the text
        already written for its hash (the record is nearly all of an event: writing it twice was 4% of a
        pass). None when that text cannot be reused: the caller writes the whole payload.

        The other fields are strings, so ``"trial":null`` occurs once in their text, as the key itself.
        """
        if self.content is None or payload.get("trial") is not self.record:
            return None
        rest = {key: value for key, value in payload.items() if key != "trial"}
        if not all(isinstance(value, str) for value in rest.values()):
            return None
        return canonical_json({**rest, "trial": None}).replace('"trial":null', '"trial":' + self.content, 1)

    def event_id(self, kind: str) -> str:
        """``ctgov:<kind>:<NCT ID>:<last update>:<hash>`` - the same record always gets the same id."""
        who = self.nct_id or "unknown"
        return f"ctgov:{kind}:{who}:{self.last_update or 'undated'}:{self.content_hash[:20]}"

    def changed_event(self, seen_at: str) -> dict[str, Any]:
        """A ``trial.changed``: the intake compares it with the stored snapshot (our last version)."""
        return {
            "type": TRIAL_CHANGED,
            "event_id": self.event_id("changed"),
            "occurred_at": seen_at,
            "trial": self.record,
        }

    def condition(self) -> str | None:
        """The condition a new-trial event is filed under: the sponsor's first, else NLM's first MeSH term.

        Which one matters little: the intake matches every condition of the trial and its MeSH concepts,
        and keys the delivery on the trial, so a follower of several of them hears once.
        """
        if not isinstance(self.record, Mapping):
            return None
        for name in ctgov.conditions(self.record):
            if any(ch.isalnum() for ch in name):
                return name[:300]
        meshes = _get(self.record, "derivedSection", "conditionBrowseModule", "meshes")
        for mesh in meshes if isinstance(meshes, list) else []:
            term = _get(mesh, "term")
            if isinstance(term, str) and any(ch.isalnum() for ch in term):
                return term[:300]
        return None

    def new_trial_event(self, seen_at: str, condition: str) -> dict[str, Any]:
        return {
            "type": NEW_TRIAL_FOR_CONDITION,
            "event_id": self.event_id("new"),
            "condition": condition,
            "occurred_at": seen_at,
            "trial": self.record,
        }
