"""alerts.ctgov against real ClinicalTrials.gov v2 records and realistic edits of them."""

from __future__ import annotations

import copy
import html
import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from alerts import ctgov
from alerts.ctgov import Change

FIXTURES = Path(__file__).parent / "fixtures" / "ctgov"
STUDY_FILES = sorted((FIXTURES / "studies").glob("NCT*.json"))
PAIR_FILES = sorted((FIXTURES / "pairs" / "NCT02552212").glob("version-*.json"))

Record = dict[str, Any]
Edit = Callable[[Record], None]


@cache
def _load(path: Path) -> Record:
    data: Record = json.loads(path.read_text(encoding="utf-8"))
    return data


def study(nct: str) -> Record:
    """A fresh deep copy, so one test's edit never leaks into another."""
    return copy.deepcopy(_load(FIXTURES / "studies" / f"{nct}.json"))


def ps(record: Record) -> Record:
    section: Record = record["protocolSection"]
    return section


def edited(nct: str, edit: Edit) -> tuple[Record, Record]:
    old = study(nct)
    new = copy.deepcopy(old)
    edit(new)
    return old, new


def markdown_to_html(text: str) -> str:
    """Re-render CT.gov Markdown the way an HTML-producing source would: lists, bold headings, entities."""
    out: list[str] = []
    in_list = False
    for raw in text.split("\n"):
        line = raw.strip()
        item = re.match(r"^(?:[*+-]|\d+\.)\s+(.*)$", line)
        if item:
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline_html(item.group(1))}</li>")
            continue
        if not line:
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        body = _inline_html(line)
        out.append(f"<p><b>{body}</b></p>" if line.endswith(":") else f"<p>{body}</p>")
    if in_list:
        out.append("</ul>")
    return "".join(out)


def _inline_html(text: str) -> str:
    text = text.replace("&", "&amp;")
    parts = re.split(r"(\\[!-/:-@\[-`{-~])", text)
    rendered = []
    for part in parts:
        if re.fullmatch(r"\\[!-/:-@\[-`{-~]", part):
            rendered.append(f"&#{ord(part[1])};")
        else:
            rendered.append(html.escape(part, quote=False).replace("&amp;", "&"))
    joined = "".join(rendered)
    return re.sub(r"\*\*(\S(?:.*?\S)?)\*\*", r"<strong>\1</strong>", joined)


def only(changes: list[Change]) -> Change:
    assert len(changes) == 1, changes
    return changes[0]


# --- edits: each must produce exactly one change ---------------------------------------------------


def _open_recruitment(r: Record) -> None:
    ps(r)["statusModule"]["overallStatus"] = "RECRUITING"


def _add_site_in_china(r: Record) -> None:
    ps(r)["contactsLocationsModule"]["locations"].append(
        {
            "facility": "Sun Yat-sen University Cancer Center",
            "status": "RECRUITING",
            "city": "Guangzhou",
            "state": "Guangdong",
            "zip": "510060",
            "country": "China",
            "geoPoint": {"lat": 23.11667, "lon": 113.25},
        }
    )


def _remove_last_site(r: Record) -> None:
    ps(r)["contactsLocationsModule"]["locations"].pop()


def _close_site(r: Record) -> None:
    ps(r)["contactsLocationsModule"]["locations"][0]["status"] = "COMPLETED"


def _finalize_enrollment(r: Record) -> None:
    ps(r)["designModule"]["enrollmentInfo"] = {"count": 212, "type": "ACTUAL"}


def _add_exclusion(r: Record) -> None:
    module = ps(r)["eligibilityModule"]
    module["eligibilityCriteria"] += "\n* Prior treatment with an anti-IL-17 antibody"


def _raise_min_age(r: Record) -> None:
    ps(r)["eligibilityModule"]["minimumAge"] = "21 Years"


def _post_results(r: Record) -> None:
    ps(r)["statusModule"]["resultsFirstPostDateStruct"] = {"date": "2024-03-05", "type": "ACTUAL"}
    r["hasResults"] = True


def _withdraw(r: Record) -> None:
    ps(r)["statusModule"]["overallStatus"] = "WITHDRAWN"
    ps(r)["statusModule"]["whyStopped"] = "Sponsor withdrew funding before enrollment"


def _phase_2_3(r: Record) -> None:
    ps(r)["designModule"]["phases"] = ["PHASE2", "PHASE3"]


def _delay_completion(r: Record) -> None:
    ps(r)["statusModule"]["primaryCompletionDateStruct"] = {"date": "2026-06", "type": "ESTIMATED"}


def _precise_start(r: Record) -> None:
    # "2011-08" -> "2011-08-01" is a different published value, not formatting.
    ps(r)["statusModule"]["startDateStruct"] = {"date": "2011-08-01", "type": "ACTUAL"}


def _study_started(r: Record) -> None:
    ps(r)["statusModule"]["startDateStruct"]["type"] = "ACTUAL"


def _new_contact(r: Record) -> None:
    ps(r)["contactsLocationsModule"]["centralContacts"] = [
        {"name": "Maria Lopez, RN", "role": "CONTACT", "phone": "617-555-0199", "email": "mlopez@example.org"}
    ]


def _add_intervention(r: Record) -> None:
    ps(r)["armsInterventionsModule"]["interventions"].append(
        {"type": "DRUG", "name": "Placebo", "armGroupLabels": ["Control"]}
    )


def _retitle(r: Record) -> None:
    ps(r)["identificationModule"]["briefTitle"] = "Digital Recovery Support App for People on Probation"


def _new_reason(r: Record) -> None:
    ps(r)["statusModule"]["whyStopped"] = "Slow accrual"


def _flip_sex(r: Record) -> None:
    ps(r)["eligibilityModule"]["sex"] = "FEMALE"


def _allow_healthy(r: Record) -> None:
    ps(r)["eligibilityModule"]["healthyVolunteers"] = True


# (id, nct, edit, field, label, before, after, headline)
EDIT_CASES: list[tuple[str, str, Edit, str, str, str | None, str | None, str]] = [
    (
        "opens-recruitment",
        "NCT04015791",
        _open_recruitment,
        "status",
        "Recruitment status",
        "Not yet recruiting",
        "Recruiting",
        "Now recruiting",
    ),
    (
        "site-added-other-country",
        "NCT03076658",
        _add_site_in_china,
        "site_added",
        "New study site",
        None,
        "Sun Yat-sen University Cancer Center, Guangzhou, Guangdong, China (Recruiting)",
        "New site in Guangzhou",
    ),
    (
        "site-removed",
        "NCT01339377",
        _remove_last_site,
        "site_removed",
        "Study site removed",
        "__site__",
        None,
        "Site removed in ",
    ),
    (
        "site-status",
        "NCT04388332",
        _close_site,
        "site_status",
        "Site recruitment status: ",
        "Recruiting",
        "Completed",
        "Site status changed in ",
    ),
    (
        "enrollment-estimated-to-actual",
        "NCT04615260",
        _finalize_enrollment,
        "enrollment",
        "Number of participants",
        "40 participants (estimated)",
        "212 participants (actual)",
        "Enrollment changed",
    ),
    (
        "eligibility-text",
        "NCT04615260",
        _add_exclusion,
        "eligibility_criteria",
        "Eligibility criteria",
        None,
        "Added: “Prior treatment with an anti-IL-17 antibody”",
        "Eligibility criteria updated",
    ),
    (
        "min-age",
        "NCT00124774",
        _raise_min_age,
        "eligibility_ages",
        "Age requirement",
        "18 years to 60 years",
        "21 years to 60 years",
        "Age limits changed",
    ),
    (
        "results-posted",
        "NCT00124774",
        _post_results,
        "results_posted",
        "Study results",
        "Not posted",
        "Posted 5 March 2024",
        "Results posted",
    ),
    (
        "withdrawn-with-reason",
        "NCT04134910",
        _withdraw,
        "status",
        "Recruitment status",
        "Not yet recruiting",
        "Withdrawn (reason: Sponsor withdrew funding before enrollment)",
        "Trial withdrawn before anyone took part",
    ),
    (
        "reason-only",
        "NCT04817267",
        _new_reason,
        "why_stopped",
        "Reason the trial stopped",
        "__why__",
        "Slow accrual",
        "Reason for stopping updated",
    ),
    (
        "phases",
        "NCT03418623",
        _phase_2_3,
        "phases",
        "Trial phase",
        "Phase 2",
        "Phase 2, Phase 3",
        "Trial phase changed",
    ),
    (
        "primary-completion-partial-date",
        "NCT04015791",
        _delay_completion,
        "primary_completion_date",
        "End of main data collection",
        "__date__",
        "June 2026 (estimated)",
        "End of main data collection changed",
    ),
    (
        "start-partial-to-full-date",
        "NCT01339377",
        _precise_start,
        "start_date",
        "Study start date",
        "August 2011",
        "1 August 2011 (actual)",
        "Study start date changed",
    ),
    (
        "start-confirmed",
        "NCT04015791",
        _study_started,
        "start_date",
        "Study start date",
        "1 April 2023 (estimated)",
        "1 April 2023 (actual)",
        "Study start date confirmed",
    ),
    (
        "central-contact",
        "NCT04015791",
        _new_contact,
        "central_contacts",
        "Contact for the trial",
        "__contact__",
        "Maria Lopez, RN, 617-555-0199, mlopez@example.org",
        "Contact details changed",
    ),
    (
        "intervention-added",
        "NCT03418623",
        _add_intervention,
        "interventions",
        "Treatments being studied",
        "__interventions__",
        "__interventions__",
        "New treatment: Drug: Placebo",
    ),
    (
        "title",
        "NCT04015791",
        _retitle,
        "title",
        "Trial title",
        "__title__",
        "Digital Recovery Support App for People on Probation",
        "Title changed",
    ),
    ("sex", "NCT04015791", _flip_sex, "eligibility_sex", "Sex", "All", "Female only", "Eligible sex changed"),
    (
        "healthy-volunteers",
        "NCT03418623",
        _allow_healthy,
        "healthy_volunteers",
        "Healthy volunteers",
        "Does not accept healthy volunteers",
        "Accepts healthy volunteers",
        "Healthy volunteer eligibility changed",
    ),
]


@pytest.mark.parametrize(
    ("nct", "edit", "field", "label", "before", "after", "headline"),
    [pytest.param(*case[1:], id=case[0]) for case in EDIT_CASES],
)
def test_edit_yields_exactly_that_change(
    nct: str, edit: Edit, field: str, label: str, before: str | None, after: str | None, headline: str
) -> None:
    old, new = edited(nct, edit)
    change = only(ctgov.diff(old, new))
    assert change.field == field
    assert change.label.startswith(label)
    assert change.headline.startswith(headline)
    # "__x__" marks values taken from the real record, which are checked loosely below.
    if not before or not before.startswith("__"):
        assert change.before == before
    else:
        assert change.before
    if not after or not after.startswith("__"):
        assert change.after == after
    assert change.before != change.after
    assert ctgov.fingerprint(old) != ctgov.fingerprint(new)
    # The reverse edit is also exactly one change of the same kind (added <-> removed for sites).
    reverse = only(ctgov.diff(new, old))
    flipped = {"site_added": "site_removed", "site_removed": "site_added"}
    assert reverse.field == flipped.get(field, field)


def test_site_removed_names_the_site() -> None:
    old, new = edited("NCT01339377", _remove_last_site)
    gone = ps(old)["contactsLocationsModule"]["locations"][-1]
    change = only(ctgov.diff(old, new))
    assert change.before is not None and gone["facility"] in change.before
    assert change.headline == f"Site removed in {gone['city']}"


def test_site_status_names_the_site() -> None:
    old, new = edited("NCT04388332", _close_site)
    site = ps(old)["contactsLocationsModule"]["locations"][0]
    change = only(ctgov.diff(old, new))
    assert site["facility"] in change.label
    assert change.headline == f"Site status changed in {site['city']}"


def test_site_reopening_says_now_recruiting() -> None:
    old, new = edited("NCT04388332", _close_site)
    change = only(ctgov.diff(new, old))
    assert change.headline.endswith("now recruiting")


def test_eligibility_edit_reports_removed_and_added_text() -> None:
    def reword(r: Record) -> None:
        module = ps(r)["eligibilityModule"]
        module["eligibilityCriteria"] = module["eligibilityCriteria"].replace(
            "At least 18 years old", "At least 21 years old"
        )

    old = _load(PAIR_FILES[0])
    new = copy.deepcopy(old)
    reword(new)
    change = only(ctgov.diff(old, new))
    assert change.field == "eligibility_criteria"
    assert change.before is not None and "18 years old" in change.before and change.before.startswith("Removed")
    assert change.after is not None and "21 years old" in change.after and change.after.startswith("Added")
    assert "Exclusion" not in change.after  # only the edited sentence, not the whole text


def test_eligibility_excerpts_are_short() -> None:
    def rewrite(r: Record) -> None:
        ps(r)["eligibilityModule"]["eligibilityCriteria"] = "Inclusion Criteria:\n\n* " + "long words " * 100

    for nct in ("NCT04615260", "NCT02210780", "NCT06909500"):
        change = only(ctgov.diff(*edited(nct, rewrite)))
        assert change.before is not None and len(change.before) <= ctgov.EXCERPT_MAX_CHARS
        assert change.after is not None and len(change.after) <= ctgov.EXCERPT_MAX_CHARS


def test_reordered_criteria_are_a_change_without_new_text() -> None:
    def swap(r: Record) -> None:
        ps(r)["eligibilityModule"]["eligibilityCriteria"] = "* Adults\n* Diagnosed with asthma"

    def swapped(r: Record) -> None:
        ps(r)["eligibilityModule"]["eligibilityCriteria"] = "* Diagnosed with asthma\n* Adults"

    old, new = edited("NCT04615260", swap), edited("NCT04615260", swapped)
    change = only(ctgov.diff(old[1], new[1]))
    assert change.field == "eligibility_criteria"
    assert change.after == "Criteria reorganized"


def test_removing_all_sites_of_a_trial() -> None:
    def clear(r: Record) -> None:
        ps(r)["contactsLocationsModule"]["locations"] = []

    old, new = edited("NCT04631133", clear)
    changes = ctgov.diff(old, new)
    assert len(changes) == len(ps(old)["contactsLocationsModule"]["locations"])
    assert {c.field for c in changes} == {"site_removed"}


def test_duplicate_unnamed_sites_in_one_city_pair_up() -> None:
    def sites(*statuses: str) -> Edit:
        def edit(r: Record) -> None:
            ps(r)["contactsLocationsModule"]["locations"] = [
                {"city": "Lyon", "country": "France", "status": s} for s in statuses
            ]

        return edit

    _, old = edited("NCT04615260", sites("RECRUITING", "RECRUITING"))
    _, new = edited("NCT04615260", sites("RECRUITING", "COMPLETED", "RECRUITING"))
    change = only(ctgov.diff(old, new))
    assert change.field == "site_added"
    assert change.headline == "New site in Lyon"
    _, closed = edited("NCT04615260", sites("COMPLETED", "RECRUITING"))
    assert [c.field for c in ctgov.diff(old, closed)] == ["site_status"]


def test_results_section_appearing_counts_as_results_posted() -> None:
    old = study("NCT04015791")
    new = copy.deepcopy(old)
    new["resultsSection"] = copy.deepcopy(_load(PAIR_FILES[0])["resultsSection"])
    change = only(ctgov.diff(old, new))
    assert (change.field, change.headline, change.after) == ("results_posted", "Results posted", "Posted")


def test_withdrawn_reason_is_shown_in_subject_and_change() -> None:
    old, new = edited("NCT04134910", _withdraw)
    changes = ctgov.diff(old, new)
    assert changes[0].after is not None and "Sponsor withdrew funding" in changes[0].after
    subject = ctgov.subject_for_changes(changes, ctgov.title(new))
    assert subject.startswith("Trial withdrawn before anyone took part: ")


# --- noise: must produce no change -----------------------------------------------------------------


def _reverse_lists(r: Record) -> None:
    section = ps(r)
    for module, key in (
        ("contactsLocationsModule", "locations"),
        ("contactsLocationsModule", "centralContacts"),
        ("conditionsModule", "conditions"),
        ("conditionsModule", "keywords"),
        ("armsInterventionsModule", "interventions"),
        ("designModule", "phases"),
    ):
        items = section.get(module, {}).get(key)
        if isinstance(items, list):
            items.reverse()


def _whitespace(r: Record) -> None:
    section = ps(r)
    ident = section["identificationModule"]
    ident["briefTitle"] = "  " + ident["briefTitle"].replace(" ", "  ") + "\n"
    elig = section["eligibilityModule"]
    text = elig["eligibilityCriteria"]
    elig["eligibilityCriteria"] = "\r\n".join(line.rstrip() + "   " for line in text.split("\n")) + "\n\n\n"
    for loc in section.get("contactsLocationsModule", {}).get("locations", []):
        if "city" in loc:
            loc["city"] = f" {loc['city']}\u00a0"


def _markdown_to_html(r: Record) -> None:
    elig = ps(r)["eligibilityModule"]
    elig["eligibilityCriteria"] = markdown_to_html(elig["eligibilityCriteria"])


def _dash_bullets(r: Record) -> None:
    elig = ps(r)["eligibilityModule"]
    elig["eligibilityCriteria"] = re.sub(r"(?m)^(\s*)\* ", r"\1- ", elig["eligibilityCriteria"])


def _bump_update_dates(r: Record) -> None:
    status = ps(r)["statusModule"]
    status["lastUpdatePostDateStruct"] = {"date": "2030-01-02", "type": "ACTUAL"}
    status["lastUpdateSubmitDate"] = "2029-12-30"
    status["statusVerifiedDate"] = "2029-12"


def _drop_derived(r: Record) -> None:
    r.pop("derivedSection", None)


def _touch_non_material(r: Record) -> None:
    section = ps(r)
    section["descriptionModule"]["briefSummary"] += " Updated wording."
    section["sponsorCollaboratorsModule"]["leadSponsor"]["name"] = "Renamed Sponsor Inc."
    section.setdefault("conditionsModule", {})["keywords"] = ["new keyword"]
    for loc in section.get("contactsLocationsModule", {}).get("locations", []):
        loc["geoPoint"] = {"lat": 0.0, "lon": 0.0}
        loc["zip"] = "00000"


def _case_and_format_only(r: Record) -> None:
    section = ps(r)
    for loc in section.get("contactsLocationsModule", {}).get("locations", []):
        if "facility" in loc:
            loc["facility"] = loc["facility"].upper()
        if "status" in loc:
            loc["status"] = loc["status"].lower()
    for contact in section.get("contactsLocationsModule", {}).get("centralContacts", []):
        if "email" in contact:
            contact["email"] = contact["email"].upper()
        if "phone" in contact:
            contact["phone"] = re.sub(r"(\d{3})(\d{3})(\d{4})$", r"(\1) \2-\3", contact["phone"].replace("-", ""))
    elig = section["eligibilityModule"]
    if "minimumAge" in elig:
        elig["minimumAge"] = elig["minimumAge"].lower()


NOISE_EDITS: dict[str, Edit] = {
    "reversed-lists": _reverse_lists,
    "whitespace": _whitespace,
    "markdown-to-html": _markdown_to_html,
    "dash-bullets": _dash_bullets,
    "update-dates-bumped": _bump_update_dates,
    "derived-section-removed": _drop_derived,
    "non-material-fields": _touch_non_material,
    "case-and-phone-format": _case_and_format_only,
}


def test_real_pair_with_reordered_derived_section_is_noise() -> None:
    old, new = (_load(path) for path in PAIR_FILES)
    assert old != new
    assert ctgov.diff(old, new) == []
    assert ctgov.fingerprint(old) == ctgov.fingerprint(new)
    assert ctgov.material_view(old) == ctgov.material_view(new)


@pytest.mark.parametrize("edit", NOISE_EDITS.values(), ids=NOISE_EDITS.keys())
@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.stem)
def test_noise_is_not_a_change(path: Path, edit: Edit) -> None:
    old = _load(path)
    new = copy.deepcopy(old)
    edit(new)
    assert ctgov.diff(old, new) == []
    assert ctgov.fingerprint(old) == ctgov.fingerprint(new)


@pytest.mark.parametrize(
    ("markdown", "markup"),
    [
        ("**Inclusion Criteria:**\n\n* Age \\>= 18", "<p><b>Inclusion Criteria:</b></p><ul><li>Age &gt;= 18</li></ul>"),
        ("* item one\n* item two", "- item one\n- item two"),
        ("* item one\n* item two", "<ul>\n  <li>item one</li>\n  <li>item two</li>\n</ul>"),
        ("1. first\n2. second", "<ol><li>first</li><li>second</li></ol>"),
        ("Hb \\< 10 g/dL", "Hb &lt; 10 g/dL"),
        ("*italic* and __bold__", "<em>italic</em> and <strong>bold</strong>"),
        ("footnote\\* and another\\*", "footnote&#42; and another&#42;"),
        ("a\nb", "a b"),
        ("# Heading\ntext", "<h2>Heading</h2><p>text</p>"),
    ],
)
def test_markdown_and_html_normalize_alike(markdown: str, markup: str) -> None:
    assert ctgov.plain_text(markdown) == ctgov.plain_text(markup)


# --- every real record -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.stem)
def test_every_real_record(path: Path) -> None:
    record = _load(path)
    snapshot = copy.deepcopy(record)
    summary = ctgov.summarize(record)
    assert summary.nct_id == path.stem == ctgov.nct_id(record)
    assert summary.url == f"https://clinicaltrials.gov/study/{path.stem}"
    assert summary.title == ctgov.title(record) and summary.title
    assert summary.countries == sorted(set(summary.countries), key=str.casefold)
    assert summary.brief_summary is None or len(summary.brief_summary) <= ctgov.SUMMARY_MAX_CHARS
    assert summary.status in ctgov.STATUS_LABELS.values()
    assert all(not p.isupper() for p in summary.phases)
    view = ctgov.material_view(record)
    assert json.loads(json.dumps(view)) == view
    assert re.fullmatch(r"[0-9a-f]{64}", ctgov.fingerprint(record))
    assert ctgov.diff(record, record) == []
    assert ctgov.diff(record, copy.deepcopy(record)) == []
    assert record == snapshot  # pure: nothing mutated


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.stem)
def test_minimal_record_works(path: Path) -> None:
    record = _load(path)
    ident = ps(record)["identificationModule"]
    minimal = {
        "protocolSection": {"identificationModule": {"nctId": ident["nctId"], "briefTitle": ident["briefTitle"]}}
    }
    summary = ctgov.summarize(minimal)
    assert summary.status == "Not provided" and summary.locations == [] and summary.phases == []
    assert ctgov.diff(minimal, minimal) == []
    # Everything the full record has is a change relative to nothing, and the reverse.
    for changes in (ctgov.diff(minimal, record), ctgov.diff(record, minimal)):
        assert changes
        assert [c.importance for c in changes] == sorted((c.importance for c in changes), reverse=True)
        subject = ctgov.subject_for_changes(changes, ctgov.title(record))
        assert "\n" not in subject and "\r" not in subject and len(subject) <= 150


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.stem)
def test_fingerprint_agrees_with_diff_under_every_edit(path: Path) -> None:
    """Applying every edit that fits the record: fingerprints differ exactly when diff is non-empty."""
    base = _load(path)
    for _, _, edit, *_ in EDIT_CASES:
        new = copy.deepcopy(base)
        try:
            edit(new)
        except (KeyError, IndexError, AttributeError):
            continue  # edit needs a module this record lacks
        changes = ctgov.diff(base, new)
        assert (ctgov.fingerprint(base) != ctgov.fingerprint(new)) == bool(changes), changes
        assert len({(c.field, c.label, c.before, c.after) for c in changes}) == len(changes)


WRONG_SHAPES: list[tuple[str, Any]] = [
    ("statusModule", []),
    ("statusModule", {"overallStatus": 7, "startDateStruct": "2020", "whyStopped": ["x"]}),
    ("designModule", {"phases": "PHASE1", "enrollmentInfo": {"count": "many", "type": None}}),
    ("designModule", {"phases": [None, 3, "PHASE1"], "enrollmentInfo": {"count": True}}),
    ("contactsLocationsModule", {"locations": {"city": "Oslo"}, "centralContacts": "call us"}),
    ("contactsLocationsModule", {"locations": [None, "Oslo", {"city": None}], "centralContacts": [None, {}]}),
    ("eligibilityModule", {"eligibilityCriteria": None, "healthyVolunteers": "yes", "minimumAge": 18}),
    ("armsInterventionsModule", {"interventions": [{"type": None}, "Drug", {"name": ["x"]}]}),
    ("conditionsModule", {"conditions": ["Asthma", None, "asthma", 4], "keywords": "k"}),
    ("descriptionModule", {"briefSummary": {"text": "x"}}),
    ("sponsorCollaboratorsModule", {"leadSponsor": "Acme"}),
]


@pytest.mark.parametrize(("module", "value"), WRONG_SHAPES, ids=lambda v: str(v)[:30])
def test_wrong_shapes_never_raise(module: str, value: Any) -> None:
    record = study("NCT04631133")
    broken = copy.deepcopy(record)
    ps(broken)[module] = value
    broken["resultsSection"] = "not a mapping"
    summary = ctgov.summarize(broken)
    assert summary.nct_id == "NCT04631133"
    ctgov.material_view(broken)
    ctgov.fingerprint(broken)
    for changes in (ctgov.diff(record, broken), ctgov.diff(broken, record), ctgov.diff(broken, broken)):
        ctgov.subject_for_changes(changes, ctgov.title(broken))
    assert ctgov.diff(broken, copy.deepcopy(broken)) == []


def test_conditions_deduplicated_in_order() -> None:
    record = study("NCT04623593")
    ps(record)["conditionsModule"]["conditions"] = ["Asthma", "COPD", " asthma ", "Cystic  Fibrosis", None]
    assert ctgov.conditions(record) == ["Asthma", "COPD", "Cystic Fibrosis"]
    assert ctgov.conditions({"protocolSection": {"identificationModule": {}}}) == []


def test_missing_nct_id_is_an_error() -> None:
    with pytest.raises(ValueError, match="nctId"):
        ctgov.nct_id({"protocolSection": {"identificationModule": {"briefTitle": "x"}}})


# --- ranking and subjects --------------------------------------------------------------------------


def test_ranking_when_several_changes_happen() -> None:
    def many(r: Record) -> None:
        for edit in (
            _retitle,
            _new_contact,
            _phase_2_3,
            _add_intervention,
            _raise_min_age,
            _finalize_enrollment,
            _delay_completion,
            _close_site,
            _post_results,
            _add_site_in_china,
            _open_recruitment,
        ):
            edit(r)

    old, new = edited("NCT04615260", many)
    ps(old)["statusModule"]["overallStatus"] = "NOT_YET_RECRUITING"
    changes = ctgov.diff(old, new)
    assert [c.field for c in changes] == [
        "status",
        "site_added",
        "results_posted",
        "site_status",
        "primary_completion_date",
        "enrollment",
        "eligibility_ages",
        "interventions",
        "phases",
        "central_contacts",
        "title",
    ]
    subject = ctgov.subject_for_changes(changes, ctgov.title(new))
    assert subject.startswith("Now recruiting and 10 more changes: Digital Recovery")


def test_ranking_constants_follow_the_documented_order() -> None:
    order = [
        ctgov.IMPORTANCE_STATUS,
        ctgov.IMPORTANCE_WHY_STOPPED,
        ctgov.IMPORTANCE_SITE_ADDED,
        ctgov.IMPORTANCE_RESULTS,
        ctgov.IMPORTANCE_SITE_STATUS,
        ctgov.IMPORTANCE_SITE_REMOVED,
        ctgov.IMPORTANCE_DATES,
        ctgov.IMPORTANCE_ENROLLMENT,
        ctgov.IMPORTANCE_ELIGIBILITY,
        ctgov.IMPORTANCE_INTERVENTIONS,
        ctgov.IMPORTANCE_PHASES,
        ctgov.IMPORTANCE_CONTACTS,
        ctgov.IMPORTANCE_TITLE,
    ]
    assert order == sorted(order, reverse=True) and len(set(order)) == len(order)


def _change(headline: str, importance: int = 50) -> Change:
    return Change("status", "Recruitment status", None, None, importance, headline)


@pytest.mark.parametrize(
    ("changes", "title", "expected"),
    [
        ([_change("Now recruiting", 100)], "Asthma study", "Now recruiting: Asthma study"),
        (
            [_change("Title changed", 5), _change("Now recruiting", 100)],
            "Asthma study",
            "Now recruiting and 1 more change: Asthma study",
        ),
        ([_change("A"), _change("B"), _change("C")], "T", "A and 2 more changes: T"),
        ([], "Asthma study", "Trial updated: Asthma study"),
        (
            [_change("Now\r\nrecruiting\tBcc: x@y")],
            "Line\nbreak\u2028title",
            "Now recruiting Bcc: x@y: Line break title",
        ),
    ],
)
def test_subject(changes: list[Change], title: str, expected: str) -> None:
    assert ctgov.subject_for_changes(changes, title) == expected


def test_long_subject_truncates_title_with_ellipsis() -> None:
    subject = ctgov.subject_for_changes([_change("New site in " + "Llanfair" * 20)], "Word " * 100)
    assert len(subject) <= ctgov.SUBJECT_MAX_CHARS
    assert subject.endswith("…")
    assert "\n" not in subject


# --- formatting --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("ACTIVE_NOT_RECRUITING", "Active, not recruiting"),
        ("COMPLETED", "Completed"),
        ("ENROLLING_BY_INVITATION", "Enrolling by invitation"),
        ("NOT_YET_RECRUITING", "Not yet recruiting"),
        ("RECRUITING", "Recruiting"),
        ("SUSPENDED", "Suspended"),
        ("TERMINATED", "Terminated"),
        ("WITHDRAWN", "Withdrawn"),
        ("AVAILABLE", "Available"),
        ("NO_LONGER_AVAILABLE", "No longer available"),
        ("TEMPORARILY_NOT_AVAILABLE", "Temporarily not available"),
        ("APPROVED_FOR_MARKETING", "Approved for marketing"),
        ("WITHHELD", "Withheld"),
        ("UNKNOWN", "Unknown status"),
        ("recruiting", "Recruiting"),
        ("SOME_NEW_CODE", "Some New Code"),
        (None, "Not provided"),
    ],
)
def test_status_label(code: str | None, label: str) -> None:
    assert ctgov.status_label(code) == label


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("2011-08", None, "August 2011"),
        ("2011-08", "ESTIMATED", "August 2011 (estimated)"),
        ("2011-08-05", None, "5 August 2011"),
        ("2011-08-05", "ACTUAL", "5 August 2011 (actual)"),
        ("2011-8-5", "actual", "5 August 2011 (actual)"),
        ("2011", None, "2011"),
        ("2011-02-30", None, "2011-02-30"),
        ("soon", "ESTIMATED", "soon (estimated)"),
        ("2011-08", "ANTICIPATED", "August 2011"),
        (None, "ACTUAL", None),
        ("  ", None, None),
    ],
)
def test_format_date(value: str | None, kind: str | None, expected: str | None) -> None:
    assert ctgov.format_date(value, kind) == expected


def test_summary_of_multi_country_recruiting_trial() -> None:
    summary = ctgov.summarize(study("NCT04631133"))
    assert summary.status == "Recruiting" and summary.status_code == "RECRUITING"
    assert summary.countries == sorted(set(summary.countries)) and len(summary.countries) >= 3
    assert all(loc.status == "Recruiting" for loc in summary.locations)
    assert summary.sponsor


def test_summary_trims_long_brief_summary_on_a_word_boundary() -> None:
    record = study("NCT04615260")
    ps(record)["descriptionModule"]["briefSummary"] = "**Background.** " + "alpha beta gamma " * 80
    summary = ctgov.summarize(record).brief_summary
    assert summary is not None and summary.startswith("Background. alpha")
    assert len(summary) <= ctgov.SUMMARY_MAX_CHARS and summary.endswith("…")
    assert summary[:-1].split()[-1] in {"alpha", "beta", "gamma"}


def test_summary_phases_and_enrollment_are_human() -> None:
    summary = ctgov.summarize(study("NCT01640457"))
    assert summary.phases == ["Phase 1", "Phase 2"]
    assert summary.enrollment == "120 participants (actual)"
    assert summary.start_date == "August 2012"


def _suspend(r: Record) -> None:
    ps(r)["statusModule"]["overallStatus"] = "SUSPENDED"


def test_a_suspended_trial_is_paused_not_stopped() -> None:
    # Suspended studies may start again: telling participants it "stopped early" would say it is over.
    old, new = edited("NCT01339377", _suspend)
    change = only(ctgov.diff(old, new))
    assert change.headline == "Trial paused"
