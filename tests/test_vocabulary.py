"""The condition vocabulary: what real records teach (pure), exact counting, resolution, suggestions."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from sqlalchemy import select

from alerts import vocabulary
from alerts.conditions import condition_key
from alerts.db import transaction
from alerts.events import parse_event
from alerts.intake import accept
from alerts.models import ConditionConcept, ConditionPhrase, ConditionPhraseConcept, Subscription
from alerts.pipeline import Rejected, ingest
from alerts.runtime import Runtime
from tests.conftest import InlineEnqueue, all_studies, study
from tests.factories import changed_event, follow

DISPLACEMENT = "D007405"  # Intervertebral Disc Displacement
DEGENERATION = "D055959"  # Intervertebral Disc Degeneration
HERNIA = "D006547"
SPINAL_DISEASES = "D013122"


def meanings(learned: vocabulary.Learned, phrase: str) -> set[str]:
    key = condition_key(phrase)
    return {c for k, c in learned.pairs if k == key}


@pytest.mark.parametrize(
    ("nct_id", "phrase", "concepts", "why"),
    [
        ("NCT00124774", "Herniated Disc", {DISPLACEMENT}, "NLM found the sponsor's words as they are"),
        ("NCT03340545", "Intervertebral Disc Herniation", {DISPLACEMENT}, "asFound equals the condition"),
        ("NCT00124774", "Intervertebral Disc Displacement", {DISPLACEMENT}, "a concept's own term"),
        ("NCT01339377", "Disk, Herniated", {DISPLACEMENT}, "the one unexplained condition, the one concept"),
        ("NCT01367860", "Herniated Disk", {DISPLACEMENT}, "Radiculopathy explains the other concept"),
        ("NCT04049812", "Lumbar Disc Herniation", {DISPLACEMENT}, "longest contained phrase, not 'herniation'"),
        ("NCT04049812", "Herniation", {HERNIA}, "NLM's asFound word for Hernia"),
        ("NCT03369626", "Type2 Diabetes", {"D003924"}, "'Type 2 Diabetes' with spaces ignored"),
        ("NCT04015791", "Lumbar Disc Disease", {DISPLACEMENT, DEGENERATION}, "NLM filed it under both"),
        ("NCT00763412", "Pancreatic Insufficiency", {"D010188"}, "zero-padded D000010188 is D010188"),
        ("NCT03505918", "Physiotherapy", set(), "three unexplained conditions: no guessing"),
        ("NCT06569069", "Disk Herniated Lumbar", set(), "Hernia is claimed by the other condition"),
        ("NCT04207047", "Abdominoplasty", set(), "no MeSH indexing at all"),
    ],
)
def test_what_a_real_record_teaches(nct_id: str, phrase: str, concepts: set[str], why: str) -> None:
    learned = vocabulary.extract(study(nct_id))
    assert meanings(learned, phrase) == concepts, why
    assert condition_key(phrase) in learned.phrases


def test_concepts_and_ancestors_of_a_record() -> None:
    learned = vocabulary.extract(study("NCT00124774"))
    assert dict(learned.concepts) == {DISPLACEMENT: "Intervertebral Disc Displacement"}
    assert SPINAL_DISEASES in learned.ancestors and DISPLACEMENT not in learned.ancestors
    assert learned.targets == ["mesh:D007405"]
    assert "mesh:D013122" in learned.broader_targets
    assert vocabulary.Learned.from_json(learned.as_json()) == learned


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("D007405", "D007405"),
        ("D000003920", "D003920"),
        ("d003920", "D003920"),
        (" D000067877 ", "D067877"),
        ("M10439", None),  # a browse leaf id, not a descriptor
        ("C000656484", None),  # supplementary concept
        (7405, None),
        ("D", None),
    ],
)
def test_mesh_ids_have_one_spelling(raw: Any, normalized: str | None) -> None:
    assert vocabulary.concept_id(raw) == normalized


@pytest.mark.parametrize(
    "derived",
    [None, "text", [], {"conditionBrowseModule": "x"}, {"conditionBrowseModule": {"meshes": "x", "browseLeaves": 3}}],
)
def test_hostile_browse_modules_teach_only_the_sponsor_words(derived: Any) -> None:
    record = study("NCT00124774")
    record["derivedSection"] = derived
    learned = vocabulary.extract(record)
    assert learned.concepts == {} and learned.pairs == frozenset()
    assert list(learned.phrases) == ["herniated disc"]


def test_odd_mesh_entries_are_skipped() -> None:
    record = study("NCT00124774")
    module = record["derivedSection"]["conditionBrowseModule"]
    module["meshes"] += [{"id": "D999999"}, {"term": "No id"}, "text", {"id": "X1", "term": "Bad id"}]
    module["browseLeaves"].append({"id": "M1", "name": "Unknown Concept", "asFound": "Sponsor words"})
    learned = vocabulary.extract(record)
    assert set(learned.concepts) == {DISPLACEMENT}
    assert "sponsor words" not in learned.phrases


def load(runtime: Runtime, inline: InlineEnqueue, records: list[dict[str, Any]]) -> None:
    """Records seen by the service (first versions: stored as baselines, learned from)."""
    for record in records:
        outcome = ingest(runtime, changed_event(record), inline, "test")
        assert not isinstance(outcome, Rejected) and outcome.status == "no_op"


def load_all(runtime: Runtime) -> None:
    """Every real record seen once, in one transaction (quicker than one event each)."""
    with transaction(runtime.engine) as session:
        for record in all_studies():
            accept(session, parse_event(changed_event(record)), runtime.renderer, runtime.site)


def counts(runtime: Runtime) -> dict[str, Any]:
    with transaction(runtime.engine) as session:
        return {
            "concepts": {c.id: (c.trials, c.trials_with_narrower) for c in session.scalars(select(ConditionConcept))},
            "phrases": {p.key: p.trials for p in session.scalars(select(ConditionPhrase))},
            "pairs": {
                (p.phrase_key, p.concept_id): p.trials
                for p in session.scalars(select(ConditionPhraseConcept))
                if p.trials
            },
        }


def test_counts_are_exact_however_often_a_trial_is_seen(runtime: Runtime, inline: InlineEnqueue) -> None:
    herniated = [study(n) for n in ("NCT00124774", "NCT01339377", "NCT03340545")]
    load(runtime, inline, herniated)
    first = counts(runtime)
    assert first["concepts"][DISPLACEMENT] == (3, 3)
    assert first["concepts"][SPINAL_DISEASES] == (0, 3)  # only ever an ancestor
    assert first["phrases"]["herniated disc"] == 2  # NCT00124774's condition, NCT01339377's asFound
    assert first["pairs"][("disk herniated", DISPLACEMENT)] == 1
    # The same versions again (new occurred_at, so not duplicates): nothing counted twice.
    for record in herniated:
        ingest(runtime, changed_event(record, occurred_at="2026-11-21T00:00:00Z"), inline, "test")
    assert counts(runtime) == first

    # A new version filed differently moves its counts; the old version's contribution is taken back.
    edited = copy.deepcopy(herniated[0])
    edited["derivedSection"]["conditionBrowseModule"]["meshes"] = [{"id": "D000006547", "term": "Hernia"}]
    ingest(runtime, changed_event(edited, occurred_at="2026-11-22T00:00:00Z"), inline, "test")
    after = counts(runtime)
    assert after["concepts"][DISPLACEMENT] == (2, 2)
    assert after["concepts"][HERNIA][0] == 1
    assert ("herniated disc", HERNIA) in after["pairs"]
    # An older version arriving late teaches nothing (its snapshot is not stored either).
    ingest(runtime, changed_event(herniated[0], occurred_at="2026-11-01T00:00:00Z"), inline, "test")
    assert counts(runtime) == after


def target_of(runtime: Runtime, subscription_id: int) -> tuple[str, str]:
    with transaction(runtime.engine) as session:
        sub = session.get(Subscription, subscription_id)
        assert sub is not None
        return sub.target, sub.label


@pytest.mark.parametrize(
    "typed", ["Herniated Disk", "Disk, Herniated", "Intervertebral Disc Herniation", "intervertebral disc displacement"]
)
def test_known_phrasings_follow_the_concept(runtime: Runtime, inline: InlineEnqueue, typed: str) -> None:
    load(runtime, inline, [study(n) for n in ("NCT01367860", "NCT01339377", "NCT03340545")])
    subscription = follow(runtime, "a@example.org", condition=typed)
    assert target_of(runtime, subscription) == ("mesh:D007405", typed)


def test_unknown_phrase_waits_and_follows_the_concept_once_learned(runtime: Runtime, inline: InlineEnqueue) -> None:
    early = follow(runtime, "early@example.org", condition="Disk, Herniated")
    unrelated = follow(runtime, "other@example.org", condition="Something Else Entirely")
    assert target_of(runtime, early) == ("disk herniated", "Disk, Herniated")
    load(runtime, inline, [study("NCT01339377")])
    assert target_of(runtime, early) == ("mesh:D007405", "Disk, Herniated")
    assert target_of(runtime, unrelated)[0] == "something else entirely"


def test_a_known_phrase_without_a_concept_resolves_when_a_record_ties_it(
    runtime: Runtime, inline: InlineEnqueue
) -> None:
    # NCT03505918 lists three conditions NLM did not explain: "Disk Herniated Lumbar" becomes known, unresolved.
    load(runtime, inline, [study("NCT03505918")])
    subscription = follow(runtime, "a@example.org", condition="disk herniated lumbar")
    assert target_of(runtime, subscription)[0] == "disk herniated lumbar"
    # NCT04276519: it is the one condition left unexplained, beside the unexplained Displacement concept.
    load(runtime, inline, [study("NCT04276519")])
    assert target_of(runtime, subscription)[0] == "mesh:D007405"


def test_a_subscriber_with_two_phrasings_of_one_concept_keeps_both(runtime: Runtime, inline: InlineEnqueue) -> None:
    first = follow(runtime, "a@example.org", condition="Herniated Disc")
    second = follow(runtime, "a@example.org", condition="Disk, Herniated")
    load(runtime, inline, [study("NCT01339377")])  # teaches both phrasings at once
    targets = sorted([target_of(runtime, first)[0], target_of(runtime, second)[0]])
    # One follows the concept; the other keeps its key (one person cannot follow a target twice).
    assert targets[1] == "mesh:D007405" and targets[0] in {"herniated disc", "disk herniated"}


def test_suggestions_rank_concepts_by_trials_and_match_words(runtime: Runtime) -> None:
    load_all(runtime)
    learned = [vocabulary.extract(r) for r in all_studies()]
    filed = {c: sum(1 for item in learned if c in item.concepts) for c in (DISPLACEMENT, HERNIA)}
    with transaction(runtime.engine) as session:
        her = vocabulary.suggest(session, "her")
        disc = vocabulary.suggest(session, "Disc")
        herniated_di = vocabulary.suggest(session, "HERNIATED di")
        assert vocabulary.suggest(session, "h") == [] and vocabulary.suggest(session, "--") == []
    # Prefix matches, one per concept, most trials first; labelled with the words trials use.
    assert [(s.label, s.concept, s.trials) for s in her][:2] == [
        ("Herniated Disc", DISPLACEMENT, filed[DISPLACEMENT]),
        ("Hernia", HERNIA, filed[HERNIA]),
    ]
    assert her[0].term == "Intervertebral Disc Displacement"
    # Word matches ("Lumbar Disc Herniation" matches "disc"), one suggestion per concept, at most 10.
    assert len(disc) <= 10 and len({s.concept or s.key for s in disc}) == len(disc)
    assert [s.trials for s in disc] == sorted((s.trials for s in disc), reverse=True)
    assert {DISPLACEMENT, DEGENERATION} <= {s.concept for s in disc}
    assert any(s.concept is None for s in disc)  # phrases no record tied to a concept are offered too
    assert [s.concept for s in herniated_di] == [DISPLACEMENT]


def test_precision_and_recall_over_every_real_record(runtime: Runtime, inline: InlineEnqueue) -> None:
    """Subscribe to every MeSH concept through a sponsor's phrasing; each gets exactly its trials."""
    from sqlalchemy import func

    from alerts.models import Delivery, Event
    from tests.factories import new_trial_event

    records = all_studies()
    load_all(runtime)
    learned = {r["protocolSection"]["identificationModule"]["nctId"]: vocabulary.extract(r) for r in records}
    concepts = sorted({c for item in learned.values() for c in item.concepts})
    labels = {k: label for item in learned.values() for k, label in item.phrases.items()}
    terms = {c: t for item in learned.values() for c, t in item.concepts.items()}
    chosen: dict[str, str] = {}
    with transaction(runtime.engine) as session:
        for concept in concepts:
            phrasings = sorted(k for item in learned.values() for k, c in item.pairs if c == concept)
            # A sponsor's or NLM's phrasing other than the term itself when one resolves to the concept.
            others = [
                k for k in phrasings if k != condition_key(terms[concept]) and vocabulary.resolve(session, k) == concept
            ]
            chosen[concept] = labels[others[0]] if others else terms[concept]
    assert sum(1 for c in concepts if condition_key(chosen[c]) != condition_key(terms[c])) >= 40
    subscriptions = {c: follow(runtime, f"{c.lower()}@example.org", condition=chosen[c]) for c in concepts}
    for concept, subscription in subscriptions.items():
        assert target_of(runtime, subscription)[0] == f"mesh:{concept}", chosen[concept]

    for nct_id, record in sorted((n, r) for n, r in zip(learned, records, strict=True)):
        conditions = record["protocolSection"]["conditionsModule"]["conditions"]
        ingest(runtime, new_trial_event(record, conditions[0], event_id=f"new-{nct_id}"), inline, "test")

    with transaction(runtime.engine) as session:
        rows = session.execute(
            select(Subscription.target, Event.nct_id)
            .join(Delivery, Delivery.subscription_id == Subscription.id)
            .join(Event, Event.id == Delivery.event_id)
        ).all()
        sent = session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "sent"))
    got: dict[str, set[str]] = {}
    for target, nct_id in rows:
        got.setdefault(target.removeprefix("mesh:"), set()).add(nct_id)
    for concept in concepts:
        expected = {n for n, item in learned.items() if concept in item.concepts}
        assert got.get(concept, set()) == expected, (concept, terms[concept], chosen[concept])
    assert sent == len(rows) == sum(len(item.concepts) for item in learned.values())


def test_trials_stored_before_the_vocabulary_existed_are_learned_once(runtime: Runtime, inline: InlineEnqueue) -> None:
    from sqlalchemy import delete

    from alerts.models import ConditionSuffix, TrialVocabulary

    load(runtime, inline, [study(n) for n in ("NCT00124774", "NCT01339377", "NCT01367860")])
    learned = counts(runtime)
    with transaction(runtime.engine) as session:  # as right after migrating to 0002
        for model in (TrialVocabulary, ConditionPhraseConcept, ConditionSuffix, ConditionPhrase, ConditionConcept):
            session.execute(delete(model))
    with transaction(runtime.engine) as session:
        assert vocabulary.learn_stored_trials(session, batch=2) == 3
    assert counts(runtime) == learned
    with transaction(runtime.engine) as session:
        assert vocabulary.learn_stored_trials(session) == 0
        assert vocabulary.resolve(session, "Herniated Disk") == DISPLACEMENT
