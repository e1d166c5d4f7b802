"""What each email says: template contexts built from trial records and changes (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Final

from alerts import ctgov, places, vocabulary
from alerts.conditions import condition_key
from alerts.eligibility import Eligibility
from alerts.rendering import Renderer

CONFIRM = "confirm-subscription"
TRIAL_CHANGED = "trial-changed"
NEW_TRIAL = "new-trial"


def _place(location: ctgov.Location) -> str:
    parts = [location.facility, location.city, location.country]
    return ", ".join(p for p in parts if p)


def trial_context(record: Mapping[str, Any]) -> dict[str, Any]:
    summary = ctgov.summarize(record)
    return {
        "take_part": take_part(record),
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


# The registry's terms, as patients say them.
PLAIN_LABELS = {
    "Recruitment status": "Status",
    "Site recruitment status": "Site status",
    "Number of participants": "Number of people",
    "Age requirement": "Age limits",
    "Healthy volunteers": "People without the illness",
    "Eligibility criteria": "Who can join",
    "Trial phase": "Study stage (phase)",
    "Treatments being studied": "Treatments tested",
}


def _plain_count(value: str | None) -> str | None:
    return value.replace(" participants", " people").replace(" participant", " person") if value else value


QUOTED_FIELDS = frozenset(
    {"site_added", "site_removed", "why_stopped", "interventions", "central_contacts", "title", "eligibility_criteria"}
)
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
    label, _, site = change.label.partition(": ") if change.field == "site_status" else (change.label, "", "")
    label = PLAIN_LABELS.get(label, label)
    if change.field == "enrollment":
        before, after = _plain_count(before), _plain_count(after)
    shown = asdict(change) | {
        "meaning": meaning(change),
        # Record text the email only quotes (site names, reasons, contacts...), as opposed to our own words.
        "quoted": change.field in QUOTED_FIELDS,
        "label_text": label,
        "label_quote": site or None,
        "before": before,
        "after": after,
    }
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
    "ACTIVE_NOT_RECRUITING": "This study is not taking new people. It cannot be joined.",
    "TERMINATED": "This study was stopped early. It cannot be joined.",
    "SUSPENDED": "This study is on hold and not taking new people. It cannot be joined for now.",
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


# --- "Can I take part?" -------------------------------------------------------------------------------

OPEN_STATUSES = frozenset({"RECRUITING", "NOT_YET_RECRUITING"})


def _status_code(record: Mapping[str, Any]) -> str | None:
    return ctgov.summarize(record).status_code


def central_contact(record: Mapping[str, Any]) -> str | None:
    """The study's first central contact with a phone or an email: "Name, phone, email"."""
    section = record.get("protocolSection")
    module = section.get("contactsLocationsModule") if isinstance(section, Mapping) else None
    contacts = module.get("centralContacts") if isinstance(module, Mapping) else None
    for item in contacts if isinstance(contacts, list) else ():
        if isinstance(item, Mapping):
            found = places.contact_text(item)
            if found:
                return found
    return None


def take_part(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The shared part of "How to take part", for a study that is recruiting (or about to); else None."""
    if _status_code(record) not in OPEN_STATUSES:
        return None
    who = Eligibility.of(record)
    contact = central_contact(record)
    site_contact = None
    if contact is None:
        # No central contact: the first open site that lists one (a placed reader gets their nearest).
        site = next((s for s in places.sites(record) if s.recruiting and s.contact), None)
        site_contact = {"site": site.label, "contact": site.contact} if site is not None else None
    return {"who": who.words(), "healthy": who.healthy_volunteers, "contact": contact, "site_contact": site_contact}


# One sentence per kind of change: what it means for someone who might take part.
_MEANINGS: Mapping[str, str] = {
    "why_stopped": "This is the reason the study team gave.",
    "site_added": "This is a new place where people may be able to join.",
    "site_removed": "People can no longer join at this place.",
    "site_status": "Check if this place is taking new people.",
    "results_posted": "You can now read what the study found.",
    "start_date": "The study may start sooner or later than planned.",
    "primary_completion_date": "The study may end sooner or later than planned.",
    "completion_date": "The study may end sooner or later than planned.",
    "enrollment": "The study now plans for a different number of people.",
    "eligibility_ages": "Check again if you can take part.",
    "eligibility_sex": "Check again if you can take part.",
    "healthy_volunteers": "Check again if you can take part.",
    "eligibility_criteria": "Check again if you can take part.",
    "interventions": "The study now tests other treatments.",
    "phases": "The study has moved to a new stage.",
    "central_contacts": "Use the new details if you want to ask about the study.",
    "title": "Only the name has changed.",
}
_STATUS_MEANINGS: Mapping[str, str] = {
    "RECRUITING": "You may be able to join this study now.",
    "NOT_YET_RECRUITING": "The study will soon look for people to join.",
    "ENROLLING_BY_INVITATION": "Only people the study team asks can join.",
    "ACTIVE_NOT_RECRUITING": "The study is not taking new people now.",
    "COMPLETED": "The study is over. Its results may come later.",
    "SUSPENDED": "The study is on hold. It is not taking new people.",
    "TERMINATED": "The study ended early. It is not taking new people.",
    "WITHDRAWN": "The study stopped before anyone joined.",
}
_LABEL_CODES: Mapping[str, str] = {label: code for code, label in ctgov.STATUS_LABELS.items()}


def meaning(change: ctgov.Change) -> str | None:
    """ "What this means for you", in one plain sentence (None when there is nothing to add)."""
    if change.field == "status":
        after = (change.after or "").split(" (reason:")[0]
        return _STATUS_MEANINGS.get(_LABEL_CODES.get(after, ""), "The study has a new status.")
    return _MEANINGS.get(change.field)


_NEAR_SENTENCES: Mapping[str, str] = {
    "added": "A new site opened {distance} from you",
    "started": "The site near you started recruiting, {distance} from you",
    "stopped": "The site near you stopped recruiting, {distance} from you",
}
_NEAR_MEANINGS: Mapping[str, str] = {
    "added": "You may be able to join close to home.",
    "started": "You may be able to join there now.",
    "stopped": "That site is not taking new people now.",
}


def _distance_words(distance: int, unit: places.Unit) -> str:
    distance = max(1, distance)  # a site in the reader's own town is "1 km" away, never "0 km"
    if unit == "mi":
        return f"{distance} mile" if distance == 1 else f"{distance} miles"
    return f"{distance} km"


def near_you(record: Mapping[str, Any], outcome: places.Outcome | None) -> dict[str, Any]:
    """The per-group part of an email for a reader with a place (``outcome``; None: no place given).

    ``changes`` are the "near you" change kinds, most important first (a new site, a site that started,
    then one that stopped recruiting); ``nearest`` is the nearest open site with its distance.
    """
    by_seq = {site.seq: site for site in places.sites(record)}
    changes = []
    nearest = None
    if outcome is not None:
        for kind in places.CHANGE_KINDS:
            if kind in outcome.sites:
                seq, distance = outcome.sites[kind]
                site = by_seq.get(seq)
                if site is not None:
                    words = _distance_words(distance, outcome.unit)
                    changes.append(
                        {
                            "kind": kind,
                            "headline": _NEAR_SENTENCES[kind].format(distance=words),
                            "site": site.label,
                            "meaning": _NEAR_MEANINGS[kind],
                        }
                    )
        if "open" in outcome.sites:
            seq, distance = outcome.sites["open"]
            site = by_seq.get(seq)
            if site is not None:
                nearest = {
                    "site": site.label,
                    "distance": _distance_words(distance, outcome.unit),
                    "contact": site.contact,
                }
    return {
        "placed": outcome is not None,
        "near_changes": changes,
        "nearest": nearest,
        "search_radius": "500 miles" if outcome is not None and outcome.unit == "mi" else "800 km",
    }


def near_fragments(
    renderer: Renderer, record: Mapping[str, Any], outcome: places.Outcome | None, shared: Mapping[str, Any]
) -> dict[str, tuple[str, str]]:
    """One outcome's "near you" fragments, slot -> (text, html) (see ``alerts.contents``)."""
    context = near_you(record, outcome)
    trial = shared.get("trial") or {}
    take = trial.get("take_part") if isinstance(trial, Mapping) else None
    context["central_contact"] = bool(take and take.get("contact"))
    # No central contact: the nearest open site's contact, else the first open site that lists one.
    context["site_contact"] = take.get("site_contact") if take else None
    return {
        "near_changes": renderer.fragment("near_changes", context),
        "near_site": renderer.fragment("near_site", context),
        "near_contact": renderer.fragment("near_contact", context),
    }


def near_subject(record: Mapping[str, Any], outcome: places.Outcome | None, shared: Mapping[str, Any]) -> str | None:
    """A change alert whose reader has a site change near them leads with it in the subject too."""
    near = near_you(record, outcome)["near_changes"]
    if not near or "changes" not in shared:
        return None
    lead = ctgov.Change("near", "", None, None, 1000, near[0]["headline"])
    others = [
        ctgov.Change(c["field"], c["label"], None, None, c["importance"], c["headline"]) for c in shared["changes"]
    ]
    return ctgov.subject_for_changes([lead, *others], ctgov.title(record))
