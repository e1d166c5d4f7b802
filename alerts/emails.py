"""What each email says: template contexts built from trial records and changes (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from alerts import ctgov

CONFIRM = "confirm-subscription"
TRIAL_CHANGED = "trial-changed"
NEW_TRIAL = "new-trial"


def _place(location: ctgov.Location) -> str:
    parts = [location.facility, location.city, location.country]
    return ", ".join(p for p in parts if p)


def trial_context(record: Mapping[str, Any]) -> dict[str, Any]:
    summary = ctgov.summarize(record)
    return {
        "nct_id": summary.nct_id,
        "title": summary.title,
        "url": summary.url,
        "status": summary.status,
        "phases": summary.phases,
        "conditions": summary.conditions,
        "sponsor": summary.sponsor,
        "locations": [p for p in (_place(loc) for loc in summary.locations) if p],
        "brief_summary": summary.brief_summary,
    }


def changes_as_dicts(changes: Sequence[ctgov.Change]) -> list[dict[str, Any]]:
    return [asdict(change) for change in changes]


def trial_changed(record: Mapping[str, Any], changes: Sequence[ctgov.Change]) -> dict[str, Any]:
    return {
        "trial": trial_context(record),
        "changes": changes_as_dicts(changes),
        "subject_line": ctgov.subject_for_changes(changes, ctgov.title(record)),
    }


def new_trial(record: Mapping[str, Any], condition_label: str) -> dict[str, Any]:
    return {"trial": trial_context(record), "condition": condition_label}


def confirm_subscription(what: str, expires_days: int) -> dict[str, Any]:
    return {"what": what, "expires_days": expires_days}
