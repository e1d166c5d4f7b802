"""ClinicalTrials.gov API v2 study records: what is material, what changed, and how to say it to a patient.

Pure functions, no I/O. Only ``protocolSection.identificationModule.nctId`` and ``briefTitle`` are
guaranteed; every other field may be missing or the wrong shape, so every read goes through the
shape-checking helpers below instead of indexing.

The one rule that ties this module together: ``material_view`` is built from the same normalized values
that ``diff`` compares, so ``fingerprint(a) == fingerprint(b)`` exactly when ``diff(a, b) == []``.
"""

from __future__ import annotations

import calendar
import difflib
import functools
import hashlib
import html
import json
import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any, Final

from alerts import jsontext

# Ranking of change kinds (higher = more important). A patient cares first whether they can still join,
# then where, then what the trial has found, then the fine print.
IMPORTANCE_STATUS: Final = 100
IMPORTANCE_WHY_STOPPED: Final = 95
IMPORTANCE_SITE_ADDED: Final = 90
IMPORTANCE_RESULTS: Final = 80
IMPORTANCE_SITE_STATUS: Final = 70
IMPORTANCE_SITE_REMOVED: Final = 60
IMPORTANCE_DATES: Final = 50
IMPORTANCE_ENROLLMENT: Final = 40
IMPORTANCE_ELIGIBILITY: Final = 30
IMPORTANCE_INTERVENTIONS: Final = 20
IMPORTANCE_PHASES: Final = 15
IMPORTANCE_CONTACTS: Final = 10
IMPORTANCE_TITLE: Final = 5

STUDY_URL: Final = "https://clinicaltrials.gov/study/"
SUBJECT_MAX_CHARS: Final = 140
SUMMARY_MAX_CHARS: Final = 600
EXCERPT_MAX_CHARS: Final = 200
# Long free text (reasons, contact lists) is cut so one field cannot swamp an email.
DISPLAY_MAX_CHARS: Final = 300
# Bump when normalization changes, so stored fingerprints are recomputed rather than silently compared.
VIEW_VERSION: Final = 1

STATUS_LABELS: Final[Mapping[str, str]] = {
    "ACTIVE_NOT_RECRUITING": "Active, not recruiting",
    "COMPLETED": "Completed",
    "ENROLLING_BY_INVITATION": "Enrolling by invitation",
    "NOT_YET_RECRUITING": "Not yet recruiting",
    "RECRUITING": "Recruiting",
    "SUSPENDED": "Suspended",
    "TERMINATED": "Terminated",
    "WITHDRAWN": "Withdrawn",
    "AVAILABLE": "Available",
    "NO_LONGER_AVAILABLE": "No longer available",
    "TEMPORARILY_NOT_AVAILABLE": "Temporarily not available",
    "APPROVED_FOR_MARKETING": "Approved for marketing",
    "WITHHELD": "Withheld",
    "UNKNOWN": "Unknown status",
}
STOPPED_STATUSES: Final = frozenset({"TERMINATED", "SUSPENDED", "WITHDRAWN"})
_STATUS_HEADLINES: Final[Mapping[str, str]] = {
    "RECRUITING": "Now recruiting",
    "NOT_YET_RECRUITING": "Not yet recruiting",
    "ENROLLING_BY_INVITATION": "Enrolling by invitation only",
    "ACTIVE_NOT_RECRUITING": "Recruitment closed",
    "COMPLETED": "Trial completed",
    "TERMINATED": "Trial stopped early",
    # Suspended: paused, and it may start again (not "stopped early", which says it is over).
    "SUSPENDED": "Trial paused",
    # Withdrawn: stopped before anyone took part (not "stopped early", which tells participants it ended on them).
    "WITHDRAWN": "Trial withdrawn before anyone took part",
    "AVAILABLE": "Now available",
    "NO_LONGER_AVAILABLE": "No longer available",
    "TEMPORARILY_NOT_AVAILABLE": "Temporarily unavailable",
    "APPROVED_FOR_MARKETING": "Approved for marketing",
    "WITHHELD": "Status withheld",
    "UNKNOWN": "Status no longer verified",
}
PHASE_LABELS: Final[Mapping[str, str]] = {
    "EARLY_PHASE1": "Early phase 1",
    "PHASE1": "Phase 1",
    "PHASE2": "Phase 2",
    "PHASE3": "Phase 3",
    "PHASE4": "Phase 4",
    "NA": "Not applicable",
}
_PHASE_ORDER: Final = {code: i for i, code in enumerate(PHASE_LABELS)}
SEX_LABELS: Final[Mapping[str, str]] = {"ALL": "All", "FEMALE": "Female only", "MALE": "Male only"}
_DATE_KINDS: Final[Mapping[str, str]] = {"ACTUAL": "actual", "ESTIMATED": "estimated"}
# The three published study dates: view key, statusModule field, patient-facing label.
_DATE_FIELDS: Final = (
    ("start_date", "startDateStruct", "Study start date"),
    ("primary_completion_date", "primaryCompletionDateStruct", "End of main data collection"),
    ("completion_date", "completionDateStruct", "Study end date"),
)


@dataclass(frozen=True)
class Change:
    field: str
    label: str
    before: str | None
    after: str | None
    importance: int
    headline: str


@dataclass(frozen=True)
class Location:
    facility: str | None
    city: str | None
    state: str | None
    country: str | None
    status: str | None


@dataclass(frozen=True)
class TrialSummary:
    nct_id: str
    title: str
    official_title: str | None
    status: str
    status_code: str | None
    phases: list[str]
    conditions: list[str]
    sponsor: str | None
    locations: list[Location]
    countries: list[str]
    enrollment: str | None
    start_date: str | None
    brief_summary: str | None
    url: str
    keywords: list[str]


# --- shape-tolerant access -------------------------------------------------------------------------


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _get(record: Mapping[str, Any], *path: str) -> Any:
    node: Any = record
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _module(record: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return _dict(_get(record, "protocolSection", name))


def _squash(value: Any) -> str | None:
    """Whitespace-collapsed text, or None for anything that is not a non-blank string."""
    return _squashed(value) if isinstance(value, str) else None


# The normalizations of a record's strings are remembered (pure functions of an immutable str): a diff
# normalizes the old and the new version, nearly the same strings, and sites, countries and statuses
# recur across records. Bounded: a few MB at most per process.
_STRINGS_REMEMBERED: Final = 1 << 15


@functools.lru_cache(maxsize=_STRINGS_REMEMBERED)
def _squashed(value: str) -> str | None:
    # NFKC folds non-breaking spaces and full-width forms that are invisible to a reader.
    text = " ".join(unicodedata.normalize("NFKC", value).split())
    return text or None


def _code(value: Any) -> str | None:
    text = _squash(value)
    return text.upper().replace(" ", "_") if text else None


_NOT_WORD: Final = re.compile(r"[\W_]+")


def _key(value: Any) -> str:
    """Identity key: case, accents, punctuation and spacing do not make a different site or contact."""
    return _keyed(_squash(value) or "")


@functools.lru_cache(maxsize=_STRINGS_REMEMBERED)
def _keyed(text: str) -> str:
    if not text.isascii():  # ASCII has no accents to strip (NFKD leaves it as it is): most names
        text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def _truncate(text: str, limit: int) -> str:
    """Cut on a word boundary and mark the cut, so a reader never sees half a word."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for item in items:
        seen.setdefault(_key(item) or item, item)
    return list(seen.values())


# --- markup normalization --------------------------------------------------------------------------

# CT.gov text is Markdown (escaped as \> \* ...) but older or re-imported records carry HTML; both
# render the same for a reader, so both must normalize to the same lines.
_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
# Private-use characters stand in for escaped punctuation so it survives Markdown stripping.
_PROTECT_BASE = 0xF0000
_HTML_TAGS = (
    "b|strong|i|em|u|s|strike|del|ins|sub|sup|span|font|a|small|big|mark|code|pre|abbr|"
    "p|br|li|ul|ol|div|h[1-6]|table|thead|tbody|tr|td|th|blockquote|hr|dl|dt|dd"
)
_BLOCK_TAG = re.compile(r"</?(?:p|br|li|ul|ol|div|h[1-6]|table|tr|blockquote|hr|dl|dt|dd)\b[^<>]*>", re.I)
_ANY_TAG = re.compile(rf"</?(?:{_HTML_TAGS})\b[^<>]*>", re.I)
_HEADING = re.compile(r"^#{1,6}\s+")
_LIST_MARKER = re.compile(r"^(?:[*+\-•·▪◦‣]|\d{1,3}[.)]|\(\d{1,3}\)|[A-Za-z][.)]|\([A-Za-z]\))\s+")
_RULE = re.compile(r"^[-*_=\s]{3,}$")
_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3})(?=\S)(.+?)(?<=\S)\1")
_UNDERSCORE_EM = re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)\s]*\)")
_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_ASCII_PUNCT = frozenset(string.punctuation)


def _protect_char(ch: str) -> str:
    return chr(_PROTECT_BASE + ord(ch))


def _protect(match: re.Match[str]) -> str:
    return _protect_char(match.group(1))


def _decode_entity(match: re.Match[str]) -> str:
    # "&gt;" in HTML and "\>" in Markdown both mean a literal ">", so both are protected the same way.
    text = html.unescape(match.group(0))
    return _protect_char(text) if text in _ASCII_PUNCT else text


# One C-level pass instead of a Python generator per character (it ran over every line of every record).
_UNPROTECT = {_PROTECT_BASE + code: code for code in range(0x80)}


def _unprotect(text: str) -> str:
    return text.translate(_UNPROTECT)


def _plain_line(line: str) -> str:
    line = line.strip()
    if _RULE.match(line):  # "---" / "***" rules are decoration, and would otherwise look like bullets
        return ""
    line = _HEADING.sub("", line)
    # Nested bullets ("* - item") lose all their markers.
    for _ in range(3):
        stripped = _LIST_MARKER.sub("", line)
        if stripped == line:
            break
        line = stripped
    line = _MD_LINK.sub(r"\1", line)
    previous = None
    while previous != line:  # "***bold italic***" and nested emphasis need more than one pass
        previous = line
        line = _UNDERSCORE_EM.sub(r"\1", _EMPHASIS.sub(r"\2", line))
    return " ".join(_unprotect(line).split())


def plain_lines(value: Any) -> list[str]:
    """Non-empty text lines with Markdown/HTML markup, list markers and spacing removed."""
    if not isinstance(value, str):
        return []
    return list(_plain_lines(value))


# The same long texts (eligibility criteria, summaries) are read several times per record version: its
# fingerprint, then the diff against the stored version, whose criteria are mostly the same text.
@lru_cache(maxsize=256)
def _plain_lines(value: str) -> tuple[str, ...]:
    text = unicodedata.normalize("NFKC", value).replace("\r\n", "\n").replace("\r", "\n")
    text = _MD_ESCAPE.sub(_protect, text)
    text = _ANY_TAG.sub("", _BLOCK_TAG.sub("\n", text))
    # Entities are decoded after tags are stripped so "&lt;b&gt;" stays literal text.
    text = html.unescape(_ENTITY.sub(_decode_entity, text))
    lines = (_plain_line(line) for line in text.split("\n"))
    return tuple(line for line in lines if line)


def plain_text(value: Any) -> str | None:
    """Markup-free single-paragraph text; line breaks are layout, not content."""
    return " ".join(plain_lines(value)) or None


def _sentences(lines: Iterable[str]) -> list[str]:
    return [part for line in lines for part in _SENTENCE_END.split(line) if part]


# --- formatting ------------------------------------------------------------------------------------


def _title_words(code: str) -> str:
    return " ".join(word.capitalize() for word in code.replace("_", " ").split())


def status_label(code: str | None) -> str:
    normalized = _code(code)
    if normalized is None:
        return "Not provided"
    return STATUS_LABELS.get(normalized) or _title_words(normalized)


def phase_label(code: str) -> str:
    normalized = _code(code) or ""
    return PHASE_LABELS.get(normalized) or _title_words(normalized)


_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$")


def _date_parts(value: str) -> tuple[int, int | None, int | None] | None:
    match = _DATE_RE.match(value)
    if not match:
        return None
    year = int(match.group(1))
    month = int(match.group(2)) if match.group(2) else None
    day = int(match.group(3)) if match.group(3) else None
    try:
        date(year, month or 1, day or 1)
    except ValueError:
        return None
    return year, month, day


def _canonical_date(value: Any) -> str | None:
    """Zero-padded ISO date at its published precision: "2011-8" and "2011-08" are the same value."""
    text = _squash(value)
    parts = _date_parts(text) if text else None
    if parts is None:
        return text
    year, month, day = parts
    return f"{year:04d}" + (f"-{month:02d}" if month else "") + (f"-{day:02d}" if day else "")


def format_date(value: str | None, kind: str | None = None) -> str | None:
    """ "2011-08" -> "August 2011", "2011-08-05" -> "5 August 2011", plus "(actual)"/"(estimated)"."""
    text = _squash(value)
    if text is None:
        return None
    parts = _date_parts(text)
    if parts is not None:
        year, month, day = parts
        text = str(year)
        if month:
            text = f"{calendar.month_name[month]} {year}"
        if month and day:
            text = f"{day} {text}"
    suffix = _DATE_KINDS.get(_code(kind) or "")
    return f"{text} ({suffix})" if suffix else text


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _format_enrollment(count: int | None, kind: str | None) -> str | None:
    if count is None:
        return None
    noun = "participant" if count == 1 else "participants"
    suffix = _DATE_KINDS.get(kind or "")
    return f"{count} {noun} ({suffix})" if suffix else f"{count} {noun}"


# --- public accessors ------------------------------------------------------------------------------


def nct_id(record: Mapping[str, Any]) -> str:
    value = _squash(_get(record, "protocolSection", "identificationModule", "nctId"))
    if value is None:
        raise ValueError("record has no protocolSection.identificationModule.nctId")
    return value.upper()


def title(record: Mapping[str, Any]) -> str:
    value = _squash(_get(record, "protocolSection", "identificationModule", "briefTitle"))
    return value if value is not None else nct_id(record)


def conditions(record: Mapping[str, Any]) -> list[str]:
    items = (_squash(item) for item in _list(_module(record, "conditionsModule").get("conditions")))
    return _unique(item for item in items if item)


def keywords(record: Mapping[str, Any]) -> list[str]:
    items = (_squash(item) for item in _list(_module(record, "conditionsModule").get("keywords")))
    return _unique(item for item in items if item)


def phase_codes(record: Mapping[str, Any]) -> list[str]:
    codes = {_code(item) for item in _list(_module(record, "designModule").get("phases"))}
    return sorted((c for c in codes if c), key=lambda c: (_PHASE_ORDER.get(c, len(_PHASE_ORDER)), c))


def locations(record: Mapping[str, Any]) -> list[Location]:
    raw = _list(_module(record, "contactsLocationsModule").get("locations"))
    return [_location(item) for item in raw if isinstance(item, Mapping)]


def _location(item: Mapping[str, Any]) -> Location:
    status = _code(item.get("status"))
    return Location(
        facility=_squash(item.get("facility")),
        city=_squash(item.get("city")),
        state=_squash(item.get("state")),
        country=_squash(item.get("country")),
        status=status_label(status) if status else None,
    )


# --- material aspects ------------------------------------------------------------------------------
# Each aspect is extracted once into JSON-ready values; material_view is just these values, and diff
# compares exactly these values, which is what keeps fingerprint and diff in agreement.


@dataclass(frozen=True)
class _Site:
    key: tuple[str, str, str]
    status: str | None
    display: str
    place: str | None


def _site(item: Mapping[str, Any]) -> _Site:
    loc = _location(item)
    parts = [loc.facility, loc.city, loc.state, loc.country]
    return _Site(
        key=(_key(loc.facility), _key(loc.city), _key(loc.country)),
        status=_code(item.get("status")),
        display=", ".join(p for p in parts if p) or "Unnamed site",
        place=loc.city or loc.country or loc.facility,
    )


def _sites(record: Mapping[str, Any]) -> list[_Site]:
    raw = _list(_module(record, "contactsLocationsModule").get("locations"))
    return [_site(item) for item in raw if isinstance(item, Mapping)]


def _status_view(record: Mapping[str, Any]) -> dict[str, Any]:
    module = _module(record, "statusModule")
    return {"code": _code(module.get("overallStatus")), "why_stopped": _squash(module.get("whyStopped"))}


def _date_view(record: Mapping[str, Any], struct: str) -> dict[str, Any]:
    value = _dict(_module(record, "statusModule").get(struct))
    return {"date": _canonical_date(value.get("date")), "type": _code(value.get("type"))}


def _enrollment_view(record: Mapping[str, Any]) -> dict[str, Any]:
    info = _dict(_module(record, "designModule").get("enrollmentInfo"))
    return {"count": _count(info.get("count")), "type": _code(info.get("type"))}


_AGE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(year|month|week|day|hour|minute)s?$", re.I)


def _age(value: Any) -> str | None:
    """ "18 Years" and "18 years" are the same limit; keep the published unit."""
    text = _squash(value)
    if text is None:
        return None
    match = _AGE_RE.match(text)
    if not match:
        return text.casefold()
    number, unit = match.group(1), match.group(2).lower()
    return f"{number} {unit}" if number == "1" else f"{number} {unit}s"


def _eligibility_view(record: Mapping[str, Any]) -> dict[str, Any]:
    module = _module(record, "eligibilityModule")
    healthy = module.get("healthyVolunteers")
    return {
        "minimum_age": _age(module.get("minimumAge")),
        "maximum_age": _age(module.get("maximumAge")),
        "sex": _code(module.get("sex")),
        "healthy_volunteers": healthy if isinstance(healthy, bool) else None,
        "criteria": plain_text(module.get("eligibilityCriteria")),
    }


def _intervention_items(record: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """(type, name key) -> display text, de-duplicated."""
    items: dict[tuple[str, str], str] = {}
    for item in _list(_module(record, "armsInterventionsModule").get("interventions")):
        if not isinstance(item, Mapping):
            continue
        kind, name = _code(item.get("type")), _squash(item.get("name"))
        if kind is None and name is None:
            continue
        kind_label = _title_words(kind).capitalize() if kind else None
        display = ": ".join(p for p in (kind_label, name) if p)
        items.setdefault((kind or "", _key(name)), display)
    return items


def _digits(value: Any) -> str:
    """Phone numbers compare by digits (and a leading +): "(555) 123-4567" == "555-123-4567"."""
    text = _squash(value) or ""
    return ("+" if text.startswith("+") else "") + re.sub(r"\D", "", text)


def _contact_items(record: Mapping[str, Any]) -> dict[tuple[str, ...], str]:
    items: dict[tuple[str, ...], str] = {}
    for item in _list(_module(record, "contactsLocationsModule").get("centralContacts")):
        if not isinstance(item, Mapping):
            continue
        name, role, phone = _squash(item.get("name")), _code(item.get("role")), _squash(item.get("phone"))
        ext, email = _squash(item.get("phoneExt")), _squash(item.get("email"))
        if not (name or phone or email):
            continue
        key = (_key(name), role or "", _digits(phone), _digits(ext), (email or "").casefold())
        phone_text = f"{phone} ext. {ext}" if phone and ext else phone
        role_text = f"({_title_words(role).lower()})" if role and role != "CONTACT" else None
        items.setdefault(key, " ".join(p for p in (name, role_text) if p) + _join_tail(phone_text, email))
    return items


def _join_tail(*parts: str | None) -> str:
    present = [p for p in parts if p]
    return (", " if present else "") + ", ".join(present)


def _results_view(record: Mapping[str, Any]) -> dict[str, Any]:
    posted_on = _canonical_date(_get(record, "protocolSection", "statusModule", "resultsFirstPostDateStruct", "date"))
    section = record.get("resultsSection")
    has_section = isinstance(section, Mapping) and bool(section)
    return {"posted": bool(posted_on) or has_section, "date": posted_on}


def _sorted_json(items: Iterable[Any]) -> list[Any]:
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


def material_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """Everything a subscriber should hear about, normalized; lists sorted so order is never a change."""
    view: dict[str, Any] = {
        "version": VIEW_VERSION,
        "title": _squash(_get(record, "protocolSection", "identificationModule", "briefTitle")),
        "status": _status_view(record),
        "enrollment": _enrollment_view(record),
        "phases": phase_codes(record),
        "sites": _sorted_json(
            {"facility": s.key[0], "city": s.key[1], "country": s.key[2], "status": s.status} for s in _sites(record)
        ),
        "eligibility": _eligibility_view(record),
        "central_contacts": _sorted_json(list(k) for k in _contact_items(record)),
        "interventions": _sorted_json(list(k) for k in _intervention_items(record)),
        "results": _results_view(record),
    }
    for field, struct, _label in _DATE_FIELDS:
        view[field] = _date_view(record, struct)
    return view


def fingerprint(record: Mapping[str, Any]) -> str:
    canonical = jsontext.canonical(material_view(record))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- diff ------------------------------------------------------------------------------------------

_Differ = Callable[[Mapping[str, Any], Mapping[str, Any]], list[Change]]


def _status_text(view: Mapping[str, Any]) -> str | None:
    code = view["code"]
    why = view["why_stopped"]
    if code is None and why is None:
        return None
    label = status_label(code)
    return _truncate(f"{label} (reason: {why})", DISPLAY_MAX_CHARS) if why else label


def _status_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    before, after = _status_view(old), _status_view(new)
    if before["code"] != after["code"]:
        # The reason travels with the status so "Withdrawn" and why arrive as one sentence.
        headline = _STATUS_HEADLINES.get(after["code"] or "", "Status changed")
        return [
            Change(
                "status", "Recruitment status", _status_text(before), _status_text(after), IMPORTANCE_STATUS, headline
            )
        ]
    if before["why_stopped"] != after["why_stopped"]:
        why_before, why_after = before["why_stopped"], after["why_stopped"]
        return [
            Change(
                "why_stopped",
                "Reason the trial stopped",
                _truncate(why_before, DISPLAY_MAX_CHARS) if why_before else None,
                _truncate(why_after, DISPLAY_MAX_CHARS) if why_after else None,
                IMPORTANCE_WHY_STOPPED,
                "Reason for stopping updated",
            )
        ]
    return []


def _place(site: _Site) -> str:
    return _truncate(site.place, 60) if site.place else "an unnamed location"


def _site_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    groups: dict[tuple[str, str, str], tuple[list[_Site], list[_Site]]] = {}
    for site in _sites(old):
        groups.setdefault(site.key, ([], []))[0].append(site)
    for site in _sites(new):
        groups.setdefault(site.key, ([], []))[1].append(site)
    changes: list[Change] = []
    for key in sorted(groups):
        changes.extend(_site_group_changes(*groups[key]))
    return changes


def _site_group_changes(before: list[_Site], after: list[_Site]) -> list[Change]:
    """Sites sharing a key (often several unnamed sites in one city) pair up by status first."""
    before, after = list(before), list(after)
    for site in list(before):
        match = next((s for s in after if s.status == site.status), None)
        if match is not None:
            before.remove(site)
            after.remove(match)
    changes = [_site_status_change(b, a) for b, a in zip(before, after, strict=False)]
    for site in after[len(before) :]:
        headline = f"New site in {_place(site)}"
        changes.append(Change("site_added", "New study site", None, _site_text(site), IMPORTANCE_SITE_ADDED, headline))
    for site in before[len(after) :]:
        headline = f"Site removed in {_place(site)}"
        changes.append(
            Change("site_removed", "Study site removed", _site_text(site), None, IMPORTANCE_SITE_REMOVED, headline)
        )
    return changes


def _site_text(site: _Site) -> str:
    status = f" ({status_label(site.status)})" if site.status else ""
    return _truncate(site.display, DISPLAY_MAX_CHARS - len(status)) + status


def _site_status_change(before: _Site, after: _Site) -> Change:
    if after.status == "RECRUITING":
        headline = f"Site in {_place(after)} now recruiting"
    else:
        headline = f"Site status changed in {_place(after)}"
    return Change(
        "site_status",
        f"Site recruitment status: {_truncate(after.display, 120)}",
        status_label(before.status) if before.status else None,
        status_label(after.status) if after.status else None,
        IMPORTANCE_SITE_STATUS,
        headline,
    )


def _results_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    before, after = _results_view(old), _results_view(new)
    if before == after:
        return []
    if after["posted"] and not before["posted"]:
        headline = "Results posted"
    elif before["posted"] and not after["posted"]:
        headline = "Results no longer shown"
    else:
        headline = "Results date changed"
    return [
        Change(
            "results_posted",
            "Study results",
            _results_text(before),
            _results_text(after),
            IMPORTANCE_RESULTS,
            headline,
        )
    ]


def _results_text(view: Mapping[str, Any]) -> str:
    if not view["posted"]:
        return "Not posted"
    when = format_date(view["date"])
    return f"Posted {when}" if when else "Posted"


def _date_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    changes: list[Change] = []
    for field, struct, label in _DATE_FIELDS:
        before, after = _date_view(old, struct), _date_view(new, struct)
        if before == after:
            continue
        confirmed = before["date"] == after["date"] and after["type"] == "ACTUAL"
        headline = f"{label} confirmed" if confirmed else f"{label} changed"
        changes.append(
            Change(
                field,
                label,
                format_date(before["date"], before["type"]),
                format_date(after["date"], after["type"]),
                IMPORTANCE_DATES,
                headline,
            )
        )
    return changes


def _enrollment_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    before, after = _enrollment_view(old), _enrollment_view(new)
    if before == after:
        return []
    return [
        Change(
            "enrollment",
            "Number of participants",
            _format_enrollment(before["count"], before["type"]),
            _format_enrollment(after["count"], after["type"]),
            IMPORTANCE_ENROLLMENT,
            "Enrollment changed",
        )
    ]


def _ages_text(view: Mapping[str, Any]) -> str | None:
    low, high = view["minimum_age"], view["maximum_age"]
    if low and high:
        return f"{low} to {high}"
    if low:
        return f"{low} and older"
    if high:
        return f"Up to {high}"
    return None


def _healthy_text(value: bool | None) -> str | None:
    if value is None:
        return None
    return "Accepts healthy volunteers" if value else "Does not accept healthy volunteers"


def _sex_text(code: str | None) -> str | None:
    return (SEX_LABELS.get(code) or _title_words(code)) if code else None


def _eligibility_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    before, after = _eligibility_view(old), _eligibility_view(new)
    changes: list[Change] = []

    def add(field: str, label: str, was: str | None, now: str | None, headline: str) -> None:
        changes.append(Change(field, label, was, now, IMPORTANCE_ELIGIBILITY, headline))

    if (before["minimum_age"], before["maximum_age"]) != (after["minimum_age"], after["maximum_age"]):
        add("eligibility_ages", "Age requirement", _ages_text(before), _ages_text(after), "Age limits changed")
    if before["sex"] != after["sex"]:
        add("eligibility_sex", "Sex", _sex_text(before["sex"]), _sex_text(after["sex"]), "Eligible sex changed")
    if before["healthy_volunteers"] != after["healthy_volunteers"]:
        was, now = _healthy_text(before["healthy_volunteers"]), _healthy_text(after["healthy_volunteers"])
        add("healthy_volunteers", "Healthy volunteers", was, now, "Healthy volunteer eligibility changed")
    if before["criteria"] != after["criteria"]:
        removed, added = _criteria_excerpts(old, new)
        add("eligibility_criteria", "Eligibility criteria", removed, added, "Eligibility criteria updated")
    return changes


def _criteria_units(record: Mapping[str, Any]) -> list[str]:
    return _sentences(plain_lines(_module(record, "eligibilityModule").get("eligibilityCriteria")))


def _criteria_excerpts(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(removed, added) excerpts; the caller already knows the normalized texts differ."""
    before, after = _criteria_units(old), _criteria_units(new)
    if not after:
        return _excerpt("Removed", before), "No criteria listed"
    if not before:
        return "No criteria listed", _excerpt("Added", after)
    removed, added = _changed_units(before, after)
    if not removed and not added:
        # Same sentences, different order: still a change, but there is no new text to quote.
        return None, "Criteria reorganized"
    return _excerpt("Removed", removed), _excerpt("Added", added)


def _changed_units(before: list[str], after: list[str]) -> tuple[list[str], list[str]]:
    removed: list[str] = []
    added: list[str] = []
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        old_chunk, new_chunk = before[i1:i2], after[j1:j2]
        # Sentences re-split across lines with identical words are layout, not content.
        if tag == "equal" or " ".join(old_chunk).split() == " ".join(new_chunk).split():
            continue
        removed.extend(old_chunk)
        added.extend(new_chunk)
    kept_before, kept_after = set(before), set(after)
    # A sentence that merely moved is neither added nor removed.
    return _unique(u for u in removed if u not in kept_after), _unique(u for u in added if u not in kept_before)


def _excerpt(verb: str, units: Sequence[str]) -> str | None:
    if not units:
        return None
    quoted = " … ".join(units)
    return _truncate(f"{verb}: “{quoted}", EXCERPT_MAX_CHARS - 1) + "”"


def _list_text(items: Iterable[str]) -> str | None:
    return _truncate("; ".join(sorted(items, key=str.casefold)), DISPLAY_MAX_CHARS) or None


def _intervention_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    before, after = _intervention_items(old), _intervention_items(new)
    if before.keys() == after.keys():
        return []
    added = [after[k] for k in after.keys() - before.keys()]
    removed = [before[k] for k in before.keys() - after.keys()]
    if len(added) == 1 and not removed:
        headline = f"New treatment: {_truncate(added[0], 60)}"
    elif len(removed) == 1 and not added:
        headline = f"Treatment removed: {_truncate(removed[0], 60)}"
    else:
        headline = "Treatments changed"
    return [
        Change(
            "interventions",
            "Treatments being studied",
            _list_text(before.values()),
            _list_text(after.values()),
            IMPORTANCE_INTERVENTIONS,
            headline,
        )
    ]


def _phase_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    before, after = phase_codes(old), phase_codes(new)
    if before == after:
        return []
    was = ", ".join(phase_label(c) for c in before) or None
    now = ", ".join(phase_label(c) for c in after) or None
    return [Change("phases", "Trial phase", was, now, IMPORTANCE_PHASES, "Trial phase changed")]


def _contact_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    before, after = _contact_items(old), _contact_items(new)
    if before.keys() == after.keys():
        return []
    return [
        Change(
            "central_contacts",
            "Contact for the trial",
            _list_text(before.values()),
            _list_text(after.values()),
            IMPORTANCE_CONTACTS,
            "Contact details changed",
        )
    ]


def _title_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    before = _squash(_get(old, "protocolSection", "identificationModule", "briefTitle"))
    after = _squash(_get(new, "protocolSection", "identificationModule", "briefTitle"))
    if before == after:
        return []
    return [Change("title", "Trial title", before, after, IMPORTANCE_TITLE, "Title changed")]


_DIFFERS: Final[tuple[_Differ, ...]] = (
    _status_changes,
    _site_changes,
    _results_changes,
    _date_changes,
    _enrollment_changes,
    _eligibility_changes,
    _intervention_changes,
    _phase_changes,
    _contact_changes,
    _title_changes,
)


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """Every material change once, most important first; ties keep the record's field order."""
    changes = [change for differ in _DIFFERS for change in differ(old, new)]
    return sorted(changes, key=lambda change: -change.importance)


# --- presentation ----------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    # Subjects with CR/LF would be header injection; collapse every kind of whitespace and control char.
    return " ".join("".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text).split())


def subject_for_changes(changes: Sequence[Change], title: str) -> str:
    """ "Now recruiting: <title>" or "Now recruiting and 2 more changes: <title>", at most 140 chars."""
    ranked = sorted(changes, key=lambda change: -change.importance)
    if ranked:
        prefix = _truncate(_one_line(ranked[0].headline), 80) or "Trial updated"
        extra = len(ranked) - 1
        if extra:
            prefix += f" and {extra} more change{'s' if extra > 1 else ''}"
    else:
        prefix = "Trial updated"
    name = _one_line(title)
    if not name:
        return prefix
    room = SUBJECT_MAX_CHARS - len(prefix) - 2
    return f"{prefix}: {_truncate(name, room)}" if room >= 10 else _truncate(prefix, SUBJECT_MAX_CHARS)


def summarize(record: Mapping[str, Any]) -> TrialSummary:
    identification = _module(record, "identificationModule")
    status = _code(_module(record, "statusModule").get("overallStatus"))
    start = _date_view(record, "startDateStruct")
    enrollment = _enrollment_view(record)
    summary = plain_text(_module(record, "descriptionModule").get("briefSummary"))
    places = locations(record)
    ident = nct_id(record)
    return TrialSummary(
        nct_id=ident,
        title=title(record),
        official_title=_squash(identification.get("officialTitle")),
        status=status_label(status),
        status_code=status,
        phases=[phase_label(code) for code in phase_codes(record)],
        conditions=conditions(record),
        sponsor=_squash(_get(record, "protocolSection", "sponsorCollaboratorsModule", "leadSponsor", "name")),
        locations=places,
        countries=sorted({loc.country for loc in places if loc.country}, key=str.casefold),
        enrollment=_format_enrollment(enrollment["count"], enrollment["type"]),
        start_date=format_date(start["date"], start["type"]),
        brief_summary=_truncate(summary, SUMMARY_MAX_CHARS) if summary else None,
        url=STUDY_URL + ident,
        keywords=keywords(record),
    )
