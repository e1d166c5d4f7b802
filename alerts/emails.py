"""What each email says: template contexts built from trial records and changes (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Final

from alerts import ctgov, vocabulary
from alerts.conditions import condition_key

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


# Both values this short: one line, "Recruitment status: Not yet recruiting → Recruiting".
INLINE_MAX_CHARS = 70
# Fields whose values say what they are ("Removed: “...”", "Added: “...”"): shown without Before/Now.
_SELF_DESCRIBED = frozenset({"eligibility_criteria"})


def present_change(change: ctgov.Change) -> dict[str, Any]:
    """How one change reads in an email: ``inline`` (before → after on the label's line) or ``lines``.

    ``lines`` are (prefix, text, kind) with kind "before" (struck through in HTML), "after" or "plain":
    "Before:"/"Now:" for two long values; the value alone when there is only one side (a site added or
    removed: the label already says which); the excerpts alone for eligibility criteria.
    """
    before, after = change.before, change.after
    shown = asdict(change)
    if change.field in _SELF_DESCRIBED:
        lines = [("", text, "plain") for text in (before, after) if text]
    elif before is not None and after is not None and len(before) + len(after) <= INLINE_MAX_CHARS:
        return shown | {"inline": True, "lines": []}
    elif before is not None and after is not None:
        lines = [("Before:", before, "before"), ("Now:", after, "after")]
    else:
        lines = [("", text, "plain") for text in (before, after) if text is not None]
    return shown | {"inline": False, "lines": [{"prefix": p, "text": t, "kind": k} for p, t, k in lines]}


def trial_changed(record: Mapping[str, Any], changes: Sequence[ctgov.Change]) -> dict[str, Any]:
    """Each change as before → after, most important first (``ctgov.diff`` order, kept here)."""
    ranked = sorted(changes, key=lambda change: -change.importance)
    return {
        "trial": trial_context(record),
        "changes": [present_change(change) for change in ranked],
        "subject_line": ctgov.subject_for_changes(changes, ctgov.title(record)),
    }


# New-trial emails for studies nobody can join any more say so (followers who asked for recruiting studies
# only never get them: alerts.matching).
NOT_JOINABLE: Final[Mapping[str, str]] = {
    "COMPLETED": "This study has already finished. It cannot be joined.",
    "ACTIVE_NOT_RECRUITING": "This study is no longer taking new participants. It cannot be joined.",
    "TERMINATED": "This study was stopped early. It cannot be joined.",
    "SUSPENDED": "This study is paused and not taking new participants. It cannot be joined for now.",
    "WITHDRAWN": "This study was withdrawn before anyone took part. It cannot be joined.",
    "NO_LONGER_AVAILABLE": "This program is no longer available. It cannot be joined.",
    "TEMPORARILY_NOT_AVAILABLE": "This program is not available for now. It cannot be joined for now.",
}


def new_trial(
    record: Mapping[str, Any], condition_label: str, learned: vocabulary.Learned | None = None
) -> dict[str, Any]:
    """The part of a new-trial email shared by every recipient; ``followed`` adds each one's reason.

    ``filed_under`` lists the MeSH terms NLM filed the trial under: they are what a subscription to a
    concept matched, so the email can show why a trial worded differently reached the reader.
    """
    learned = learned if learned is not None else vocabulary.extract(record)
    filed_under = sorted(learned.concepts.values(), key=str.casefold)
    code = ctgov.summarize(record).status_code
    return {
        "trial": trial_context(record),
        # Said plainly near the top: a "new trial" may already be over (registered late, or seen late).
        "not_joinable": NOT_JOINABLE.get(code or ""),
        "condition": condition_label,
        "followed": condition_label,
        "about": condition_label,
        "filed_under": filed_under,
    }


def followed(label: str, condition_label: str) -> dict[str, Any]:
    """The per-variant part of a new-trial email: the condition this group of recipients follows.

    ``followed`` is their label, as they typed it ("You follow: herniated disc"); ``about`` names the
    condition in the subject and first sentence: the event's wording when it is the same condition
    (same condition key), else their label (a trial reached through its MeSH concept may be worded
    quite differently from what they follow).
    """
    same = condition_key(label) == condition_key(condition_label)
    return {"followed": label, "about": condition_label if same else label}


def confirm_subscription(what: str | Sequence[str], expires_days: int) -> dict[str, Any]:
    """One confirmation email for everything one sign-up asked for: ``items`` lists each alert.

    ``what`` comes from ``alerts.subscriptions.describe``: only names the service vouches for.
    """
    items = [what] if isinstance(what, str) else list(what)
    summary = items[0] if len(items) == 1 else f"{len(items)} alerts"
    return {"what": summary, "items": items, "expires_days": expires_days}
