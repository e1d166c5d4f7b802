"""The condition vocabulary, learned from NLM's own MeSH indexing of every record the service sees.

Each ClinicalTrials.gov record carries ``derivedSection.conditionBrowseModule``: the MeSH descriptors NLM
filed the study under (``meshes``), their broader descriptors (``ancestors``), and in ``browseLeaves``
the words NLM recognised for each one (``asFound``). From every record we learn which phrases mean which
MeSH concept (``extract``, pure; ``learn``, counted in the database):

* a concept's own term means that concept ("Intervertebral Disc Displacement" -> D007405);
* an ``asFound`` phrase means the concept of its leaf ("Herniated Disc" -> D007405);
* a sponsor's condition means the concepts whose term or ``asFound`` phrase it is (compared by
  ``condition_key``, and also with spaces ignored, so "Type2 Diabetes" is "Type 2 Diabetes"); failing
  that, the concepts whose phrases it contains as whole words, keeping only the longest ("Lumbar Disc
  Herniation" contains "disc herniation" and "herniation": it means what "disc herniation" means);
  failing that, when it is the one condition of the record left unexplained, the concepts that no other
  condition explains ("Disk, Herniated", alone on a record filed under D007405, means D007405).

A phrase **resolves** to a set of concepts, from a running tally of that evidence (``resolve_again``):

1. every concept the phrase was tied to in at least half as many trials as its most frequent one
   ("Depression": Depression in 4 trials, Depressive Disorder in 3: both; "Herniated Disc": disc
   displacement in 4, Hernia in 1: displacement);
2. minus a concept that is broader than another one kept (NLM's ``ancestors``: "Opioid Use Disorder" is
   tied to Opioid-Related Disorders and to its ancestor Substance-Related Disorders; it means the first).
   Concept A is broader than B when every trial filed under B lists A among its concepts or ancestors,
   and at least one lists it as an ancestor (``ConditionAncestry``); siblings are all kept;
3. a phrase no trial ties to anything, but which is a concept's own term, means that concept.

The set is stored per phrase (``condition_meanings``) and recomputed whenever the phrase's evidence, or
the ancestry of one of its concepts, changes; each change is recorded with its reason
(``condition_resolutions``). Condition subscriptions follow the phrase (``Subscription.target`` is its
condition key), never a copy of its meaning: a phrase re-resolved moves all its subscriptions at once.
A trial matches a subscription when it lists the phrase itself (always, whatever the vocabulary says:
new registrations often have no MeSH indexing yet) or is filed under a concept of its meaning
(``phrases_meaning``; ``alerts.matching``).

MeSH ids come as "D007405" or zero-padded "D000007405" for the same descriptor; ``concept_id`` keeps six
digits at least, so both are "D007405" (and "D000067877" is "D067877").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import delete, exists, func, insert, or_, select, text
from sqlalchemy.orm import Session, aliased

from alerts import ctgov
from alerts.conditions import MAX_CONDITION_LENGTH, condition_key
from alerts.db import xact_lock
from alerts.listparam import one_of
from alerts.models import (
    ConditionAncestry,
    ConditionConcept,
    ConditionMeaning,
    ConditionPhrase,
    ConditionPhraseConcept,
    ConditionResolution,
    ConditionSuffix,
    Subscription,
    SubscriptionKind,
    Trial,
    TrialVocabulary,
    utcnow,
)

CONCEPT_PREFIX: Final = "mesh:"
# Counting upserts, written out: the same SQL on PostgreSQL and SQLite (>= 3.24), and unlike SQLAlchemy's
# ON CONFLICT constructs, cacheable (they run on every new trial).
_UPSERT_PHRASE = text(
    'INSERT INTO condition_phrases ("key", label, trials) VALUES (:key, :label, :trials) '
    'ON CONFLICT ("key") DO UPDATE SET trials = condition_phrases.trials + excluded.trials'
)
_INSERT_SUFFIX = text(
    "INSERT INTO condition_suffixes (suffix, phrase_key) VALUES (:suffix, :phrase_key) ON CONFLICT DO NOTHING"
)
_UPSERT_CONCEPT = text(
    "INSERT INTO condition_concepts (id, term, term_key, trials, trials_with_narrower) "
    "VALUES (:id, :term, :term_key, :trials, :broad) "
    "ON CONFLICT (id) DO UPDATE SET term = excluded.term, term_key = excluded.term_key, "
    "trials = condition_concepts.trials + excluded.trials, "
    "trials_with_narrower = condition_concepts.trials_with_narrower + excluded.trials_with_narrower"
)
_UPSERT_PAIR = text(
    "INSERT INTO condition_phrase_concepts (phrase_key, concept_id, trials) VALUES (:phrase_key, :concept_id, :trials) "
    "ON CONFLICT (phrase_key, concept_id) DO UPDATE SET trials = condition_phrase_concepts.trials + excluded.trials"
)
_UPSERT_ANCESTRY = text(
    "INSERT INTO condition_ancestry (concept_id, ancestor_id, together, as_ancestor) "
    "VALUES (:c, :a, :together, :as_ancestor) ON CONFLICT (concept_id, ancestor_id) DO UPDATE SET "
    "together = condition_ancestry.together + excluded.together, "
    "as_ancestor = condition_ancestry.as_ancestor + excluded.as_ancestor"
)
_SET_RESOLUTION = text('UPDATE condition_phrases SET concept_id = :c WHERE "key" = :k')
# What ``trial_vocabulary.learned`` rows written by this code carry: rows without it (before revision
# 0011) did not count ancestry.
_VERSION: Final = 2
# Rule 1 of the resolution: a concept tied to the phrase in at least SHARE_NUM/SHARE_DEN as many trials
# as its most frequent concept is part of its meaning.
SHARE_NUM: Final = 1
SHARE_DEN: Final = 2
_NCT_ID = re.compile(r"^NCT[0-9]{8}$")
_MESH_ID = re.compile(r"^D0*(\d{1,9})$")


def concept_id(raw: Any) -> str | None:
    """ "D000003920" and "D003920" are the same descriptor: both become "D003920". None if not a MeSH id."""
    if not isinstance(raw, str):
        return None
    match = _MESH_ID.match(raw.strip().upper())
    return f"D{int(match.group(1)):06d}" if match else None


def concept_target(concept: str) -> str:
    """The ``Subscription.target`` of a condition subscription that follows a MeSH concept."""
    return CONCEPT_PREFIX + concept


def target_concept(target: str) -> str | None:
    """The concept id of a ``mesh:`` target; None for a plain condition key (condition keys have no colon)."""
    return target[len(CONCEPT_PREFIX) :] if target.startswith(CONCEPT_PREFIX) else None


# --- what one record teaches (pure) ------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return " ".join(value.split())[:MAX_CONDITION_LENGTH] or None


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _concepts(items: Any) -> dict[str, str]:
    concepts: dict[str, str] = {}
    for item in _list(items):
        item = _dict(item)
        cid, term = concept_id(item.get("id")), _text(item.get("term"))
        if cid and term and condition_key(term):
            concepts.setdefault(cid, term)
    return concepts


def _contains(phrase: str, part: str) -> bool:
    """``part`` occurs in ``phrase`` as whole words (both are condition keys)."""
    return f" {part} " in f" {phrase} "


@dataclass(frozen=True)
class Learned:
    """What one record says about conditions: its concepts and the phrases that name them."""

    # Phrases the trial uses (sponsor conditions, NLM's asFound words, its concepts' terms): key -> label.
    phrases: Mapping[str, str] = field(default_factory=dict)
    # MeSH concepts the trial is filed under (``meshes``): id -> term.
    concepts: Mapping[str, str] = field(default_factory=dict)
    # Broader concepts (``ancestors``) that are not also among ``concepts``: id -> term.
    ancestors: Mapping[str, str] = field(default_factory=dict)
    # (phrase key, concept id): this record's evidence that the phrase means the concept.
    pairs: frozenset[tuple[str, str]] = frozenset()

    @property
    def targets(self) -> list[str]:
        """Targets of the concept subscriptions this trial matches."""
        return [concept_target(c) for c in sorted(self.concepts)]

    @property
    def broader_targets(self) -> list[str]:
        """Targets of concept subscriptions this trial matches only if they include narrower concepts."""
        return [concept_target(c) for c in sorted(self.ancestors)]

    def as_json(self) -> dict[str, Any]:
        return {
            "v": _VERSION,
            "phrases": dict(sorted(self.phrases.items())),
            "concepts": dict(sorted(self.concepts.items())),
            "ancestors": dict(sorted(self.ancestors.items())),
            "pairs": [list(p) for p in sorted(self.pairs)],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Learned:
        return cls(
            phrases=dict(data.get("phrases") or {}),
            concepts=dict(data.get("concepts") or {}),
            ancestors=dict(data.get("ancestors") or {}),
            pairs=frozenset((str(k), str(c)) for k, c in data.get("pairs") or []),
        )


def extract(record: Mapping[str, Any]) -> Learned:
    """What ``record`` teaches; see the module docstring for the rules. Tolerates any missing piece."""
    module = _dict(_dict(record.get("derivedSection")).get("conditionBrowseModule"))
    concepts = _concepts(module.get("meshes"))
    ancestors = {c: t for c, t in _concepts(module.get("ancestors")).items() if c not in concepts}
    labels: dict[str, str] = {}
    # NLM's own statements: phrase key -> the concepts it names in this record.
    named: dict[str, set[str]] = {}
    by_term: dict[str, set[str]] = {}
    for cid, term in concepts.items():
        key = condition_key(term)
        labels.setdefault(key, term)
        named.setdefault(key, set()).add(cid)
        by_term.setdefault(key, set()).add(cid)
    sponsor = [(condition_key(label), label) for label in ctgov.conditions(record)]
    for key, label in sponsor:
        if key:
            labels.setdefault(key, label[:MAX_CONDITION_LENGTH])
    for leaf in _list(module.get("browseLeaves")):
        leaf = _dict(leaf)
        found = _text(leaf.get("asFound"))
        ids = by_term.get(condition_key(_text(leaf.get("name")) or ""))
        key = condition_key(found or "")
        if found and ids and key:
            labels.setdefault(key, found)
            named.setdefault(key, set()).update(ids)
    pairs = {(key, cid) for key, ids in named.items() for cid in ids}

    claimed: set[str] = set()
    unexplained: list[str] = []
    for key in dict.fromkeys(k for k, _ in sponsor if k):
        meaning = _meaning(key, named, claimed)
        if meaning:
            pairs |= {(key, cid) for cid in meaning}
        else:
            unexplained.append(key)
    if len(unexplained) == 1:
        pairs |= {(unexplained[0], cid) for cid in set(concepts) - claimed}
    return Learned(phrases=labels, concepts=concepts, ancestors=ancestors, pairs=frozenset(pairs))


def _meaning(key: str, named: Mapping[str, set[str]], claimed: set[str]) -> set[str]:
    """Concepts a sponsor's condition names; every concept whose phrase it contains counts as claimed."""
    compact = key.replace(" ", "")
    exact = [p for p in named if p.replace(" ", "") == compact]
    contained = [p for p in named if _contains(key, p)]
    for phrase in exact + contained:
        claimed |= named[phrase]
    chosen = exact or [p for p in contained if not any(o != p and _contains(o, p) for o in contained)]
    return set().union(*(named[p] for p in chosen)) if chosen else set()


# --- counting what records teach (database) ----------------------------------------------------------


def _suffixes(key: str) -> list[str]:
    """Every word-start suffix: "lumbar disc herniation" -> itself, "disc herniation", "herniation"."""
    words = key.split(" ")
    return [" ".join(words[i:]) for i in range(len(words))]


def _delta(new: Iterable[Any], old: Iterable[Any]) -> dict[Any, int]:
    now, before = set(new), set(old)
    return {item: (item in now) - (item in before) for item in sorted(now | before)}


def learn(session: Session, nct_id: str, learned: Learned) -> dict[str, str]:
    """Count what this version of a trial teaches (``learn_changes``); {phrase key: main concept} of the
    phrases whose meaning changed ("" for a phrase that no longer means any concept)."""
    return {c.key: (c.after or ("",))[0] for c in learn_changes(session, nct_id, learned)}


@dataclass(frozen=True)
class Change:
    """A phrase's meaning before and after a re-resolution (main concept first)."""

    key: str
    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def gained(self) -> frozenset[str]:
        return frozenset(self.after) - frozenset(self.before)


def learn_changes(session: Session, nct_id: str, learned: Learned) -> list[Change]:
    """Count what this version of a trial teaches, replacing what an earlier version of it taught.

    Trial counts stay exact however often a trial is seen: ``trial_vocabulary`` remembers what each trial
    contributed and only the difference is applied. Then every phrase whose evidence changed is resolved
    again (``condition_meanings``, with the reason in ``condition_resolutions``): the subscriptions that
    follow it move with it. Returns the phrases whose meaning changed. Works inside the caller's
    transaction; call it once per record (``learn_record``), for any number of records, or once for many
    (``learn_many``).
    """
    return learn_many(session, {nct_id: learned})


# A transaction-scoped advisory lock (db.xact_lock): whoever changes the vocabulary's counts, or matches new
# trials by what phrases mean while others may change it (the watcher's chunks side by side), holds it until
# commit. Learners queue instead of deadlocking on the
# counters' rows, and a catch-up never misses a new trial matched, uncommitted, by the meaning it replaces.
LEARNING_LOCK: Final = 0x766F6361


def serialize_learning(session: Session) -> None:
    """Wait for the vocabulary until this transaction ends (PostgreSQL; SQLite serializes writers anyway).
    Taken again by the same transaction, it returns at once."""
    xact_lock(session, LEARNING_LOCK)


def learn_many(session: Session, versions: Mapping[str, Learned]) -> list[Change]:
    """``learn_changes`` for several trials at once (a page of registry records): the same counts and
    meanings as learning them one by one, in the same statements for all of them (set-based: a dozen
    round trips per batch instead of per trial), and one re-resolution of the phrases whose evidence
    changed. Each trial's new version replaces what its stored row taught.
    """
    ids = list(versions)  # in the caller's order (labels); statements below run in sorted order
    if not ids:
        return []
    # Rows already in the session (a caller that read them for a page) cost no query.
    rows: dict[str, TrialVocabulary] = {}
    for nct_id in ids:
        found = session.identity_map.get(session.identity_key(TrialVocabulary, nct_id))
        if isinstance(found, TrialVocabulary):
            rows[nct_id] = found
    missing = sorted(set(ids) - set(rows))
    if missing:
        rows |= {
            r.nct_id: r for r in session.scalars(select(TrialVocabulary).where(TrialVocabulary.nct_id.in_(missing)))
        }
    now = utcnow()
    befores: list[Learned] = []
    afters: list[Learned] = []
    learned_from: list[str] = []
    old_ancestry: dict[tuple[str, str], tuple[int, int]] = {}
    for nct_id in ids:
        learned, row = versions[nct_id], rows.get(nct_id)
        state = learned.as_json()
        if row is not None and row.learned == state:
            continue
        old = Learned.from_json(row.learned) if row is not None else Learned()
        # Rows written before revision 0011 did not count ancestry: their ancestry is counted now, once.
        if row is not None and row.learned.get("v") == _VERSION:
            for pair, (together, as_ancestor) in _ancestry(old).items():
                was = old_ancestry.get(pair, (0, 0))
                old_ancestry[pair] = (was[0] + together, was[1] + as_ancestor)
        if row is None:
            session.add(TrialVocabulary(nct_id=nct_id, learned=state, updated_at=now))
        else:
            row.learned = state
            row.updated_at = now
        befores.append(old)
        afters.append(learned)
        learned_from.append(nct_id)
    if not afters:
        return []
    serialize_learning(session)

    # Every phrase to count or to make known, before and now: the trials' phrases and the terms of all their
    # concepts (ancestors' too: "Spinal Diseases" is something one can follow).
    # As learning them one by one would leave them: a concept's term as the last trial names it, a new
    # phrase labelled as the first trial to use it writes it.
    terms: dict[str, str] = {}
    labels: dict[str, str] = {}
    for old, learned in zip(befores, afters, strict=True):
        own = {**old.ancestors, **old.concepts, **learned.ancestors, **learned.concepts}
        terms |= own
        for key, label in {**{condition_key(t): t for t in own.values()}, **old.phrases, **learned.phrases}.items():
            labels.setdefault(key, label)
    labels.pop("", None)
    phrase_delta: dict[str, int] = {}
    direct: dict[str, int] = {}
    broad: dict[str, int] = {}
    pair_delta: dict[tuple[str, str], int] = {}
    new_ancestry: dict[tuple[str, str], tuple[int, int]] = {}
    for old, learned in zip(befores, afters, strict=True):
        _add(phrase_delta, _delta(learned.phrases, old.phrases))
        _add(direct, _delta(learned.concepts, old.concepts))
        _add(broad, _delta({*learned.concepts, *learned.ancestors}, {*old.concepts, *old.ancestors}))
        _add(pair_delta, _delta(learned.pairs, old.pairs))
        for pair, (together, as_ancestor) in _ancestry(learned).items():
            was = new_ancestry.get(pair, (0, 0))
            new_ancestry[pair] = (was[0] + together, was[1] + as_ancestor)
    ancestry_delta = {
        pair: (new_ancestry.get(pair, (0, 0))[0] - before[0], new_ancestry.get(pair, (0, 0))[1] - before[1])
        for pair in sorted(set(new_ancestry) | set(old_ancestry))
        for before in [old_ancestry.get(pair, (0, 0))]
    }
    ancestry_delta = {pair: d for pair, d in ancestry_delta.items() if d != (0, 0)}

    known_phrases = set(session.scalars(select(ConditionPhrase.key).where(ConditionPhrase.key.in_(list(labels)))))
    known_concepts = set(session.scalars(select(ConditionConcept.id).where(ConditionConcept.id.in_(list(terms)))))
    # Concepts whose broader concepts may change with these records: compared before and after counting.
    filed = sorted({c for c, d in direct.items() if d} | {b for b, _ in ancestry_delta})
    broader_before = _broader(session, filed)
    # Only rows that change, each statement executed once per row in sorted order: concurrent learners
    # take row locks in the same order (no deadlocks).
    phrase_rows = [
        {"key": k, "label": labels[k], "trials": phrase_delta.get(k, 0)}
        for k in sorted(labels)
        if phrase_delta.get(k, 0) or k not in known_phrases
    ]
    if phrase_rows:
        session.execute(_UPSERT_PHRASE, phrase_rows)
    suffix_rows = [
        {"suffix": s, "phrase_key": k}
        for s, k in sorted({(s, k) for k in labels if k not in known_phrases for s in _suffixes(k)})
    ]
    if suffix_rows:
        session.execute(_INSERT_SUFFIX, suffix_rows)
    concept_rows = [
        {
            "id": c,
            "term": terms[c],
            "term_key": condition_key(terms[c]),
            "trials": direct.get(c, 0),
            "broad": broad.get(c, 0),
        }
        for c in sorted(terms)
        if direct.get(c, 0) or broad.get(c, 0) or c not in known_concepts
    ]
    if concept_rows:
        session.execute(_UPSERT_CONCEPT, concept_rows)
    changed_pairs = {p: d for p, d in sorted(pair_delta.items()) if d}
    if changed_pairs:
        session.execute(
            _UPSERT_PAIR, [{"phrase_key": k, "concept_id": c, "trials": d} for (k, c), d in changed_pairs.items()]
        )
    if ancestry_delta:
        session.execute(
            _UPSERT_ANCESTRY,
            [{"c": b, "a": a, "together": t, "as_ancestor": s} for (b, a), (t, s) in ancestry_delta.items()],
        )

    stale = {k for k, _ in changed_pairs} | (set(labels) - known_phrases)
    stale |= {condition_key(terms[c]) for c in set(terms) - known_concepts}
    broader_after = _broader(session, filed)
    regrouped = {c for c in filed if broader_before.get(c) != broader_after.get(c)}
    if regrouped:
        stale |= _phrases_spanning(session, regrouped)
    stale.discard("")
    why = "a record of " + learned_from[0] if len(learned_from) == 1 else f"records of {len(learned_from)} trials"
    return _resolve_again(session, sorted(stale), why=why)


def _add(total: dict[Any, int], more: Mapping[Any, int]) -> None:
    for key, n in more.items():
        total[key] = total.get(key, 0) + n


def learn_record(session: Session, record: Mapping[str, Any]) -> list[Change]:
    """``learn`` for one ClinicalTrials.gov record (the watcher's bootstrap, dumps).

    Raises ValueError for a record without a valid NCT ID (nothing is counted then).
    """
    nct_id = ctgov.nct_id(record)
    if not _NCT_ID.match(nct_id):
        raise ValueError(f"not an NCT ID: {nct_id[:20]!r}")
    return learn_changes(session, nct_id, extract(record))


def _ancestry(learned: Learned) -> dict[tuple[str, str], tuple[int, int]]:
    """(concept, other concept) -> (listed together, listed as an ancestor) for one record: 0 or 1 each."""
    listed = {*learned.concepts, *learned.ancestors}
    return {
        (b, a): (1, int(a in learned.ancestors)) for b in sorted(learned.concepts) for a in sorted(listed) if a != b
    }


def _broader(session: Session, concepts: Sequence[str]) -> dict[str, frozenset[str]]:
    """concept -> the concepts NLM files it under (see ``ConditionAncestry``), for the given concepts."""
    if not concepts:
        return {}
    rows = session.execute(
        select(ConditionAncestry.concept_id, ConditionAncestry.ancestor_id)
        .join(ConditionConcept, ConditionConcept.id == ConditionAncestry.concept_id)
        .where(
            ConditionAncestry.concept_id.in_(list(concepts)),
            ConditionAncestry.together >= ConditionConcept.trials,
            ConditionAncestry.as_ancestor > 0,
        )
    )
    broader: dict[str, set[str]] = {}
    for concept, ancestor in rows:
        broader.setdefault(concept, set()).add(ancestor)
    return {c: frozenset(a) for c, a in broader.items()}


def _phrases_spanning(session: Session, concepts: set[str]) -> set[str]:
    """Phrases tied to one of ``concepts`` and to some other concept: their meaning may narrow or widen."""
    other = aliased(ConditionPhraseConcept)
    rows = session.scalars(
        select(ConditionPhraseConcept.phrase_key)
        .distinct()
        .where(
            ConditionPhraseConcept.concept_id.in_(sorted(concepts)),
            ConditionPhraseConcept.trials > 0,
            exists().where(
                other.phrase_key == ConditionPhraseConcept.phrase_key,
                other.concept_id != ConditionPhraseConcept.concept_id,
                other.trials > 0,
            ),
        )
    )
    return set(rows)


@dataclass(frozen=True)
class Resolution:
    """What a phrase means now, and why (one line an operator can read)."""

    concepts: tuple[str, ...]  # main concept first (most evidence; then more trials; then lower id)
    reason: str


def _decide(
    key: str,
    evidence: Mapping[str, int],
    term_of: Mapping[str, str],
    trials: Mapping[str, int],
    broader: Mapping[str, frozenset[str]],
) -> Resolution:
    """The resolution rule for one phrase (module docstring): a tally, then the broader/narrower rule."""
    evidence = {c: n for c, n in evidence.items() if n > 0}
    if not evidence:
        own = sorted((c for c, t in term_of.items() if condition_key(t) == key), key=lambda c: (-trials.get(c, 0), c))
        if own:
            return Resolution((own[0],), f"the term of {own[0]} ({term_of[own[0]]}); no trial ties it elsewhere")
        return Resolution((), "no trial ties it to a concept")
    most = max(evidence.values())
    kept = {c for c, n in evidence.items() if n * SHARE_DEN >= most * SHARE_NUM}
    dropped_weak = sorted(set(evidence) - kept)
    broader_than = {
        a: b for a in kept for b in sorted(kept) if b != a and a in broader.get(b, ()) and b not in broader.get(a, ())
    }
    kept -= set(broader_than)
    order = sorted(kept, key=lambda c: (-evidence[c], -trials.get(c, 0), c))
    total = ", ".join(f"{c} in {evidence[c]}" for c in sorted(evidence, key=lambda c: (-evidence[c], c)))
    parts = [f"trials tie it to {total}"]
    if dropped_weak:
        parts.append(f"{', '.join(dropped_weak)} left out (under {SHARE_NUM}/{SHARE_DEN} of the most)")
    for a, b in sorted(broader_than.items()):
        parts.append(f"{a} left out (broader than {b})")
    return Resolution(tuple(order), "; ".join(parts))


def resolve_again(session: Session, keys: Sequence[str], why: str = "") -> dict[str, str]:
    """Resolve these phrases from their evidence now; store and record every meaning that changed.

    Set-based: a few queries for all the phrases, one DELETE and one INSERT per statement kind. Every
    subscription following a phrase follows its new meaning from the next event on. Returns {phrase key:
    main concept} ("" when the phrase no longer means anything) for the phrases that changed.
    """
    return {c.key: (c.after or ("",))[0] for c in _resolve_again(session, keys, why)}


def _resolve_again(session: Session, keys: Sequence[str], why: str) -> list[Change]:
    if not keys:
        return []
    keys = list(dict.fromkeys(keys))
    evidence: dict[str, dict[str, int]] = {k: {} for k in keys}
    for key, cid, n in session.execute(
        select(
            ConditionPhraseConcept.phrase_key, ConditionPhraseConcept.concept_id, ConditionPhraseConcept.trials
        ).where(ConditionPhraseConcept.phrase_key.in_(keys), ConditionPhraseConcept.trials > 0)
    ):
        evidence[key][cid] = int(n)
    involved = {c for ids in evidence.values() for c in ids}
    concepts = session.execute(
        select(ConditionConcept.id, ConditionConcept.term, ConditionConcept.trials).where(
            or_(ConditionConcept.id.in_(sorted(involved)), ConditionConcept.term_key.in_(keys))
        )
    ).all()
    term_of = {cid: term for cid, term, _ in concepts}
    trials = {cid: int(n) for cid, _, n in concepts}
    broader = _broader(session, sorted(involved))
    current: dict[str, set[str]] = {k: set() for k in keys}
    for key, cid in session.execute(
        select(ConditionMeaning.phrase_key, ConditionMeaning.concept_id).where(ConditionMeaning.phrase_key.in_(keys))
    ):
        current[key].add(cid)
    decided = {k: _decide(k, evidence[k], term_of, trials, broader) for k in keys}
    changed = {k: r for k, r in decided.items() if set(r.concepts) != current[k]}
    if not changed:
        return []
    changed_keys = sorted(changed)
    session.execute(delete(ConditionMeaning).where(ConditionMeaning.phrase_key.in_(changed_keys)))
    rows = [{"phrase_key": k, "concept_id": c} for k in changed_keys for c in changed[k].concepts]
    if rows:
        session.execute(insert(ConditionMeaning), rows)
    session.execute(_SET_RESOLUTION, [{"k": k, "c": (changed[k].concepts or (None,))[0]} for k in changed_keys])
    followers: dict[str, int] = {
        target: int(n)
        for target, n in session.execute(
            select(Subscription.target, func.count())
            .where(Subscription.kind == SubscriptionKind.CONDITION.value, Subscription.target.in_(changed_keys))
            .group_by(Subscription.target)
        )
    }
    now = utcnow()
    session.execute(
        insert(ConditionResolution),
        [
            {
                "phrase_key": k,
                "resolved_at": now,
                "before": sorted(current[k]),
                "after": list(changed[k].concepts),
                "reason": (f"{why}: " if why else "") + changed[k].reason,
                "subscriptions": int(followers.get(k, 0)),
            }
            for k in changed_keys
        ],
    )
    return [Change(k, tuple(sorted(current[k])), changed[k].concepts) for k in changed_keys]


def resolve_all(session: Session, batch: int = 1000, why: str = "resolved again by alerts vocabulary learn") -> int:
    """Resolve every phrase again from its evidence (after migrating to 0011, or a rule change).

    Meanings are otherwise recomputed only when a phrase's evidence changes. Returns how many changed.
    """
    changed = 0
    after = ""
    while True:
        keys = list(
            session.scalars(
                select(ConditionPhrase.key)
                .where(ConditionPhrase.key > after)
                .order_by(ConditionPhrase.key)
                .limit(batch)
            )
        )
        if not keys:
            return changed
        changed += len(_resolve_again(session, keys, why))
        after = keys[-1]
        session.flush()


def resolve(session: Session, phrase: str) -> str | None:
    """The main concept a phrase resolves to, or None while the vocabulary does not tie it to one."""
    key = condition_key(phrase)
    if not key:
        return None
    return session.scalar(select(ConditionPhrase.concept_id).where(ConditionPhrase.key == key))


@dataclass(frozen=True)
class Vouched:
    """A condition phrase registry records used: one the web may sign people up for, and how we name it."""

    key: str  # the phrase's condition key
    name: str  # what emails and pages show: its concept's MeSH term, else the phrase as records wrote it
    concept: str | None  # the MeSH concept it resolves to, if any


def vouch(session: Session, phrase: str) -> Vouched | None:
    """The vocabulary's words for ``phrase``, or None when no record used it.

    Named by what the phrase means (its concepts' MeSH terms, ``meaning``), else as records wrote it.
    """
    key = condition_key(phrase)
    if not key:
        return None
    label = session.scalar(select(ConditionPhrase.label).where(ConditionPhrase.key == key))
    if label is None:
        return None
    meant = meaning(session, phrase)
    return Vouched(key=key, name=meant.name or label, concept=meant.concepts[0].id if meant.concepts else None)


@dataclass(frozen=True)
class Concept:
    id: str  # "D007405"
    term: str  # NLM's plain name, "Intervertebral Disc Displacement"


@dataclass(frozen=True)
class Meaning:
    """What following a phrase means today: what sign-up pages and emails may show for it."""

    key: str  # its condition key (what a subscription's target is)
    known: bool  # some record used the phrase
    concepts: tuple[Concept, ...]  # every concept it means, main one first; () while none

    @property
    def name(self) -> str | None:
        """The plain name to show: the concepts' MeSH terms ("Depression or Depressive Disorder")."""
        return " or ".join(c.term for c in self.concepts) or None


def meaning(session: Session, phrase: str) -> Meaning:
    """A phrase's resolved concept set and the plain name to show for it (any phrase; empty if unknown)."""
    key = condition_key(phrase)
    if not key:
        return Meaning(key, False, ())
    main = session.execute(select(ConditionPhrase.concept_id).where(ConditionPhrase.key == key)).first()
    rows = session.execute(
        select(ConditionConcept.id, ConditionConcept.term, ConditionConcept.trials)
        .join(ConditionMeaning, ConditionMeaning.concept_id == ConditionConcept.id)
        .where(ConditionMeaning.phrase_key == key)
    ).all()
    first = main[0] if main else None
    ordered = sorted(rows, key=lambda r: (r[0] != first, -r[2], r[0]))
    return Meaning(key, main is not None, tuple(Concept(cid, term) for cid, term, _ in ordered))


def history(session: Session, phrase: str, limit: int = 20) -> list[ConditionResolution]:
    """How a phrase's meaning changed and why, newest first (``alerts vocabulary why``)."""
    return list(
        session.scalars(
            select(ConditionResolution)
            .where(ConditionResolution.phrase_key == condition_key(phrase))
            .order_by(ConditionResolution.id.desc())
            .limit(limit)
        )
    )


# Built once, with the concepts as one list parameter (alerts.listparam): one statement text whatever
# their number, run for every new trial.
_PHRASES_MEANING: Final = (
    select(ConditionMeaning.phrase_key)
    .distinct()
    .where(one_of(ConditionMeaning.concept_id, "ids"))
    .order_by(ConditionMeaning.phrase_key)
)


def phrases_meaning(session: Session, concepts: Iterable[str]) -> list[str]:
    """Keys of the phrases whose meaning includes one of ``concepts``: what a trial filed under them matches
    besides its own words (``alerts.intake``). One index lookup by concept.

    Not narrowed to phrases someone follows: the matching statement probes each key in the subscriptions'
    match index anyway, and an EXISTS here was planned badly when one phrase has most of the followers
    (PostgreSQL expected every probe to hit at once, and scanned a whole index for each phrase nobody
    follows: 0.37 s at 100,000 followers).
    """
    ids = sorted(set(concepts))
    if not ids:
        return []
    return list(session.scalars(_PHRASES_MEANING, {"ids": ids}))


def concept_term(session: Session, concept: str) -> str | None:
    return session.scalar(select(ConditionConcept.term).where(ConditionConcept.id == concept))


def learn_stored_trials(session: Session, batch: int = 500) -> int:
    """Learn from stored trial versions not learned from by this code (stored before 0002, counted before 0011)."""
    count = 0
    after = ""
    while True:
        rows = session.execute(
            select(Trial.nct_id, Trial.record, TrialVocabulary.learned)
            .outerjoin(TrialVocabulary, TrialVocabulary.nct_id == Trial.nct_id)
            .where(Trial.nct_id > after)
            .order_by(Trial.nct_id)
            .limit(batch)
        ).all()
        if not rows:
            return count
        for nct_id, record, learned in rows:
            if learned is None or learned.get("v") != _VERSION:
                learn(session, nct_id, extract(record))
                count += 1
        after = rows[-1][0]
        session.flush()


# --- suggestions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    label: str  # a phrasing trials use, as written there: what the subscriber signs up with
    key: str  # its condition key
    concept: str | None  # its main MeSH concept, if any
    term: str | None  # that concept's term
    trials: int  # trials filed under the main concept (or using the phrase, without a concept)
    trials_including_narrower: int  # ... plus those filed under a narrower concept
    concepts: tuple[str, ...] = ()  # every concept the phrase means (``meaning``), main one first
    name: str | None = None  # the plain name to show: their MeSH terms ("Depression or Depressive Disorder")


def suggest(session: Session, query: str, limit: int = 10) -> list[Suggestion]:
    """Phrases the vocabulary knows, starting with ``query`` or with a word starting with it, most trials first.

    One suggestion per meaning (or per phrase without one), labelled with the best-matching phrasing: a
    phrasing that starts with the query before one that merely contains it, then the most used. Each
    carries what following it means (``concepts``, ``name``): the sign-up form shows the plain name, so
    people pick a phrase the vocabulary understands rather than free text it does not.
    """
    q = condition_key(query)
    if len(q) < 2:
        return []
    upper = q[:-1] + chr(ord(q[-1]) + 1)
    rank = func.coalesce(ConditionConcept.trials, ConditionPhrase.trials)
    rows = session.execute(
        select(
            ConditionPhrase.key,
            ConditionPhrase.label,
            ConditionPhrase.trials,
            ConditionPhrase.concept_id,
            ConditionConcept.term,
            ConditionConcept.trials,
            ConditionConcept.trials_with_narrower,
            ConditionSuffix.suffix,
        )
        .join(ConditionPhrase, ConditionPhrase.key == ConditionSuffix.phrase_key)
        .outerjoin(ConditionConcept, ConditionConcept.id == ConditionPhrase.concept_id)
        .where(ConditionSuffix.suffix >= q, ConditionSuffix.suffix < upper)
        .order_by(rank.desc(), ConditionPhrase.trials.desc(), ConditionPhrase.key)
        .limit(limit * 25)
    ).all()
    means: dict[str, list[tuple[str, str, int]]] = {}
    for key, cid, term, trials in session.execute(
        select(ConditionMeaning.phrase_key, ConditionConcept.id, ConditionConcept.term, ConditionConcept.trials)
        .join(ConditionConcept, ConditionConcept.id == ConditionMeaning.concept_id)
        .where(ConditionMeaning.phrase_key.in_(sorted({r[0] for r in rows})))
    ):
        means.setdefault(key, []).append((cid, term, int(trials)))
    best: dict[tuple[str, ...], tuple[tuple[int, int, str], Suggestion]] = {}
    for key, label, phrase_trials, cid, term, trials, broad, suffix in rows:
        concepts = sorted(means.get(key, []), key=lambda c: (c[0] != cid, -c[2], c[0]))
        prefix = suffix == key
        item = Suggestion(
            label=label,
            key=key,
            concept=cid,
            term=term,
            trials=int(trials if cid else phrase_trials),
            trials_including_narrower=int(broad if cid else phrase_trials),
            concepts=tuple(c[0] for c in concepts),
            name=" or ".join(c[1] for c in concepts) or None,
        )
        order = (0 if prefix else 1, -int(phrase_trials), label.casefold())
        same = tuple(sorted(item.concepts)) or (key,)
        if same not in best or order < best[same][0]:
            best[same] = (order, item)
    ranked = sorted(best.values(), key=lambda pair: (-pair[1].trials, pair[0]))
    return [item for _, item in ranked[:limit]]
