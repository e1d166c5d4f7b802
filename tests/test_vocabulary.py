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
from alerts.models import (
    ConditionConcept,
    ConditionPhrase,
    ConditionPhraseConcept,
    ConditionResolution,
    Subscription,
)
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


def means(runtime: Runtime, phrase: str) -> set[str]:
    with transaction(runtime.engine) as session:
        return {c.id for c in vocabulary.meaning(session, phrase).concepts}


@pytest.mark.parametrize(
    "typed", ["Herniated Disk", "Disk, Herniated", "Intervertebral Disc Herniation", "intervertebral disc displacement"]
)
def test_known_phrasings_mean_the_concept_and_subscriptions_follow_the_phrase(
    runtime: Runtime, inline: InlineEnqueue, typed: str
) -> None:
    load(runtime, inline, [study(n) for n in ("NCT01367860", "NCT01339377", "NCT03340545")])
    subscription = follow(runtime, "a@example.org", condition=typed)
    assert target_of(runtime, subscription) == (condition_key(typed), typed)
    assert means(runtime, typed) == {DISPLACEMENT}
    with transaction(runtime.engine) as session:
        shown = vocabulary.meaning(session, typed)
    assert shown.known and shown.name == "Intervertebral Disc Displacement"


def test_a_phrase_means_every_sibling_concept_nlm_ties_it_to(runtime: Runtime, inline: InlineEnqueue) -> None:
    load(runtime, inline, [study(n) for n in ("NCT04015791", "NCT05486611", "NCT04985331", "NCT06295185")])
    assert means(runtime, "Lumbar Disc Disease") == {DISPLACEMENT, DEGENERATION}
    assert means(runtime, "Depression") == {"D003863", "D003866"}  # Depression, Depressive Disorder
    with transaction(runtime.engine) as session:
        assert vocabulary.meaning(session, "Depression").name == "Depression or Depressive Disorder"
        assert vocabulary.meaning(session, "Never Seen Anywhere") == vocabulary.Meaning(
            "never seen anywhere", False, ()
        )


def test_a_phrase_tied_to_a_concept_and_its_ancestor_means_the_specific_one(
    runtime: Runtime, inline: InlineEnqueue
) -> None:
    # NCT04948307 ties "Opioid Use Disorder" to Opioid-Related Disorders and to Substance-Related Disorders;
    # NCT04817267 (filed under Opioid-Related Disorders alone) lists Substance-Related Disorders as its ancestor.
    load(runtime, inline, [study("NCT04948307")])
    assert means(runtime, "Opioid Use Disorder") == {"D009293", "D019966"}  # nothing yet says which is broader
    load(runtime, inline, [study("NCT04817267")])
    assert means(runtime, "Opioid Use Disorder") == {"D009293"}
    with transaction(runtime.engine) as session:
        last = session.scalars(
            select(ConditionResolution)
            .where(ConditionResolution.phrase_key == "opioid use disorder")
            .order_by(ConditionResolution.id.desc())
        ).first()
    assert last is not None and last.before == ["D009293", "D019966"] and last.after == ["D009293"]
    assert "D019966 left out (broader than D009293)" in last.reason and "NCT04817267" in last.reason


def _filed_under_hernia(nct_id: str) -> dict[str, Any]:
    """A real disc record NLM had filed under Hernia for "Herniated Disc" (as the first record may be)."""
    record = study("NCT00124774")
    record["protocolSection"]["identificationModule"]["nctId"] = nct_id
    module = record["derivedSection"]["conditionBrowseModule"]
    module["meshes"] = [{"id": "D006547", "term": "Hernia"}]
    module["ancestors"] = [{"id": "D020763", "term": "Pathological Conditions, Anatomical"}]
    module["browseLeaves"] = [{"id": "M9625", "name": "Hernia", "asFound": "Herniated Disc", "relevance": "HIGH"}]
    return record


def test_an_early_guess_is_revisited_and_every_follower_moves_with_the_phrase(
    runtime: Runtime, inline: InlineEnqueue
) -> None:
    from alerts.models import Delivery, Event
    from tests.factories import new_trial_event

    load(runtime, inline, [_filed_under_hernia("NCT90000001")])
    followers = [follow(runtime, f"f{i}@example.org", condition="Herniated Disc") for i in range(3)]
    assert means(runtime, "Herniated Disc") == {HERNIA}
    # Later records settle it: disc displacement (the same phrase, NLM's asFound, in each).
    disc = [study(n) for n in ("NCT00124774", "NCT04015791", "NCT05701059", "NCT01339377")]
    load(runtime, inline, disc)
    assert means(runtime, "Herniated Disc") == {DISPLACEMENT}
    with transaction(runtime.engine) as session:
        history = session.scalars(
            select(ConditionResolution)
            .where(ConditionResolution.phrase_key == "herniated disc")
            .order_by(ConditionResolution.id)
        ).all()
        assert [(h.before, h.after) for h in history][-1] == ([HERNIA], [DISPLACEMENT])
        assert history[-1].subscriptions == len(followers)
        assert "left out" in history[-1].reason
    # A hernia trial no longer reaches them; a disc trial worded otherwise does.
    hernia = _filed_under_hernia("NCT90000002")
    hernia["protocolSection"]["conditionsModule"]["conditions"] = ["Inguinal Hernia"]
    ingest(runtime, new_trial_event(hernia, "Inguinal Hernia", event_id="hernia"), inline, "test")
    ingest(
        runtime,
        new_trial_event(study("NCT03340545"), "Intervertebral Disc Herniation", event_id="disc"),
        inline,
        "test",
    )
    with transaction(runtime.engine) as session:
        reached = session.execute(
            select(Event.nct_id, Delivery.subscription_id).join(Event, Event.id == Delivery.event_id)
        ).all()
    assert sorted(reached) == [("NCT03340545", s) for s in followers]


def test_a_trial_listing_the_phrase_matches_without_any_mesh_indexing(runtime: Runtime, inline: InlineEnqueue) -> None:
    from alerts.models import Delivery
    from tests.factories import new_trial_event

    load(runtime, inline, [study(n) for n in ("NCT01367860", "NCT01339377", "NCT03340545")])
    subscription = follow(runtime, "a@example.org", condition="Herniated Disc")
    fresh = study("NCT00124774")  # lists "Herniated Disc"
    del fresh["derivedSection"]  # a new registration NLM has not indexed yet
    ingest(runtime, new_trial_event(fresh, "Herniated Disc", event_id="fresh"), inline, "test")
    with transaction(runtime.engine) as session:
        assert session.scalars(select(Delivery.subscription_id)).all() == [subscription]


def test_narrower_terms_only_when_asked(runtime: Runtime, inline: InlineEnqueue) -> None:
    from alerts import subscriptions
    from alerts.models import Delivery
    from tests.factories import new_trial_event

    load(runtime, inline, [study(n) for n in ("NCT04015791", "NCT01339377")])
    plain = follow(runtime, "plain@example.org", condition="Spinal Diseases")
    wide = follow(runtime, "wide@example.org", condition="Spinal Diseases")
    with transaction(runtime.engine) as session:
        subscriptions.set_filters(session, wide, subscriptions.ConditionFilters(), include_narrower=True)
    assert means(runtime, "Spinal Diseases") == {SPINAL_DISEASES}
    ingest(runtime, new_trial_event(study("NCT03340545"), "Intervertebral Disc Herniation"), inline, "test")
    with transaction(runtime.engine) as session:
        assert session.scalars(select(Delivery.subscription_id)).all() == [wide]
    assert plain != wide


def test_a_subscriber_with_two_phrasings_of_one_concept_gets_one_email(
    runtime: Runtime, inline: InlineEnqueue, memory: Any
) -> None:
    from tests.factories import new_trial_event

    first = follow(runtime, "a@example.org", condition="Herniated Disc")
    second = follow(runtime, "a@example.org", condition="Disk, Herniated")
    load(runtime, inline, [study("NCT01339377")])  # teaches both phrasings at once
    assert target_of(runtime, first)[0] == "herniated disc" and target_of(runtime, second)[0] == "disk herniated"
    ingest(runtime, new_trial_event(study("NCT03340545"), "Intervertebral Disc Herniation"), inline, "test")
    assert [r.email for b in memory.batches for r in b.recipients] == ["a@example.org"]


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
    # Word matches ("Lumbar Disc Herniation" matches "disc"), one suggestion per meaning, at most 10.
    assert len(disc) <= 10 and len({s.concepts or s.key for s in disc}) == len(disc)
    assert [s.trials for s in disc] == sorted((s.trials for s in disc), reverse=True)
    assert {DISPLACEMENT, DEGENERATION} <= {s.concept for s in disc}
    assert any(s.concept is None for s in disc)  # phrases no record tied to a concept are offered too
    assert [s.concept for s in herniated_di] == [DISPLACEMENT]


def test_trials_stored_before_the_vocabulary_existed_are_learned_once(runtime: Runtime, inline: InlineEnqueue) -> None:
    from sqlalchemy import delete

    from alerts.models import ConditionAncestry, ConditionMeaning, ConditionResolution, ConditionSuffix, TrialVocabulary

    load(runtime, inline, [study(n) for n in ("NCT00124774", "NCT01339377", "NCT01367860")])
    learned = counts(runtime)
    with transaction(runtime.engine) as session:  # as right after migrating to 0002
        for model in (
            TrialVocabulary,
            ConditionResolution,
            ConditionMeaning,
            ConditionAncestry,
            ConditionPhraseConcept,
            ConditionSuffix,
            ConditionPhrase,
            ConditionConcept,
        ):
            session.execute(delete(model))
    with transaction(runtime.engine) as session:
        assert vocabulary.learn_stored_trials(session, batch=2) == 3
    assert counts(runtime) == learned
    with transaction(runtime.engine) as session:
        assert vocabulary.learn_stored_trials(session) == 0
        assert vocabulary.resolve(session, "Herniated Disk") == DISPLACEMENT
        assert vocabulary.resolve_all(session, batch=7) == 0  # already what the evidence says
        # As right after migrating to 0011: a phrase pinned to one of its concepts is put right.
        session.execute(delete(ConditionMeaning).where(ConditionMeaning.phrase_key == "herniated disk"))
    with transaction(runtime.engine) as session:
        assert vocabulary.resolve_all(session, batch=7) == 1
        assert {c.id for c in vocabulary.meaning(session, "Herniated Disk").concepts} == {DISPLACEMENT}


def test_a_subscription_still_pinned_to_a_concept_follows_that_concept(runtime: Runtime, inline: InlineEnqueue) -> None:
    """Migration 0011 leaves a pinned ("mesh:") subscription where its owner already follows the phrase."""
    from sqlalchemy import update

    from alerts.models import Delivery
    from tests.factories import new_trial_event

    pinned = follow(runtime, "pinned@example.org", condition="Disk, Herniated")
    with transaction(runtime.engine) as session:
        session.execute(update(Subscription).where(Subscription.id == pinned).values(target="mesh:D007405"))
    ingest(runtime, new_trial_event(study("NCT03340545"), "Intervertebral Disc Herniation"), inline, "test")
    with transaction(runtime.engine) as session:
        assert session.scalars(select(Delivery.subscription_id)).all() == [pinned]


def test_learning_many_at_once_counts_and_resolves_as_one_by_one(runtime: Runtime) -> None:
    """vocabulary.learn_many (the watcher's pages) ends where learn_changes one record at a time ends:
    the same counts, ancestry, labels and meanings, also when versions replace earlier ones."""
    from tests.conftest import _truncate

    records = all_studies()[:60]
    edited = copy.deepcopy(records[0])
    edited["derivedSection"]["conditionBrowseModule"]["meshes"] = [{"id": "D000006547", "term": "Hernia"}]

    def state() -> dict[str, Any]:
        with transaction(runtime.engine) as session:
            return counts(runtime) | {
                "ancestry": {
                    (a.concept_id, a.ancestor_id): (a.together, a.as_ancestor)
                    for a in session.scalars(select(vocabulary.ConditionAncestry))
                },
                # The main concept among a phrase's meanings is left out: one by one, it is chosen when the
                # phrase's own evidence last changed, with the trial counts of that moment as tie-breaker
                # ("cystic fibrosis related diabetes" between two concepts with as much evidence); at once,
                # with the counts of the end.
                "labels": {p.key: p.label for p in session.scalars(select(ConditionPhrase))},
                "meanings": sorted(
                    (m.phrase_key, m.concept_id) for m in session.scalars(select(vocabulary.ConditionMeaning))
                ),
            }

    def learned(record: dict[str, Any]) -> tuple[str, vocabulary.Learned]:
        return record["protocolSection"]["identificationModule"]["nctId"], vocabulary.extract(record)

    with transaction(runtime.engine) as session:
        for record in records:
            vocabulary.learn_changes(session, *learned(record))
        vocabulary.learn_changes(session, *learned(edited))
    one_by_one = state()

    _truncate(runtime.engine)
    with transaction(runtime.engine) as session:
        vocabulary.learn_many(session, dict(learned(r) for r in records[:30]))
    with transaction(runtime.engine) as session:
        # The rest, and a new version of a trial learned in the first batch.
        vocabulary.learn_many(session, dict(learned(r) for r in [*records[30:], edited]))
    assert state() == one_by_one
