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

A phrase **resolves** to one concept: the concept whose term it is; else the concept it was seen with in
the most trials (ties: the concept with more trials, then the lower id). The resolution is stored on the
phrase (``condition_phrases.concept_id``) and recomputed whenever the phrase's own evidence changes.

Subscriptions to a resolved phrase follow the concept: ``Subscription.target`` is ``"mesh:D007405"``
(``concept_target``) and ``label`` stays what the subscriber typed. An unknown phrase falls back to its
condition key; when a later record teaches it, ``learn`` re-targets those subscriptions in one UPDATE
per phrase. Once resolved, a subscription keeps its concept (a phrase changing its best concept later
does not move existing subscribers).

MeSH ids come as "D007405" or zero-padded "D000007405" for the same descriptor; ``concept_id`` keeps six
digits at least, so both are "D007405" (and "D000067877" is "D067877").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import exists, func, select, text, update
from sqlalchemy.orm import Session, aliased

from alerts import ctgov
from alerts.conditions import MAX_CONDITION_LENGTH, condition_key
from alerts.models import (
    ConditionConcept,
    ConditionPhrase,
    ConditionPhraseConcept,
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
_SET_RESOLUTION = text('UPDATE condition_phrases SET concept_id = :c WHERE "key" = :k')
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
    """Count what this version of a trial teaches, replacing what an earlier version of it taught.

    Trial counts stay exact however often a trial is seen: ``trial_vocabulary`` remembers what each trial
    contributed and only the difference is applied. Then phrases whose evidence changed are resolved
    again, and condition subscriptions waiting on a newly understood phrase follow its concept.
    Returns {phrase key: concept id} for the phrases whose resolution changed.
    """
    row = session.get(TrialVocabulary, nct_id)
    state = learned.as_json()
    if row is not None and row.learned == state:
        return {}
    old = Learned.from_json(row.learned) if row is not None else Learned()
    if row is None:
        session.add(TrialVocabulary(nct_id=nct_id, learned=state, updated_at=utcnow()))
    else:
        row.learned = state
        row.updated_at = utcnow()

    # Every phrase to count or to make known, before and now: the trial's phrases and the terms of all its
    # concepts (ancestors' too: "Spinal Diseases" is something one can follow).
    terms = {**old.ancestors, **old.concepts, **learned.ancestors, **learned.concepts}
    labels = {condition_key(t): t for t in terms.values()} | dict(old.phrases) | dict(learned.phrases)
    labels.pop("", None)
    phrase_delta = _delta(learned.phrases, old.phrases)
    direct = _delta(learned.concepts, old.concepts)
    broad = _delta({*learned.concepts, *learned.ancestors}, {*old.concepts, *old.ancestors})
    pair_delta = _delta(learned.pairs, old.pairs)

    known_phrases = set(session.scalars(select(ConditionPhrase.key).where(ConditionPhrase.key.in_(list(labels)))))
    known_concepts = set(session.scalars(select(ConditionConcept.id).where(ConditionConcept.id.in_(list(terms)))))
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
    changed_pairs = {p: d for p, d in pair_delta.items() if d}
    if changed_pairs:
        session.execute(
            _UPSERT_PAIR, [{"phrase_key": k, "concept_id": c, "trials": d} for (k, c), d in changed_pairs.items()]
        )

    stale = {k for k, _ in changed_pairs} | (set(labels) - known_phrases)
    stale |= {condition_key(terms[c]) for c in set(terms) - known_concepts}
    changed = _resolve_again(session, sorted(stale & set(labels)))
    follow_concepts(session, changed)
    return changed


def _best(session: Session, keys: Sequence[str]) -> dict[str, str]:
    """The resolution rule, for many phrases in two queries."""
    best: dict[str, str] = {}
    exact = session.execute(
        select(ConditionConcept.term_key, ConditionConcept.id)
        .where(ConditionConcept.term_key.in_(keys))
        .order_by(ConditionConcept.term_key, ConditionConcept.trials.desc(), ConditionConcept.id)
    )
    for key, cid in exact:
        best.setdefault(key, cid)
    rest = [k for k in keys if k not in best]
    if rest:
        evidence = session.execute(
            select(ConditionPhraseConcept.phrase_key, ConditionPhraseConcept.concept_id)
            .join(ConditionConcept, ConditionConcept.id == ConditionPhraseConcept.concept_id)
            .where(ConditionPhraseConcept.phrase_key.in_(rest))
            .order_by(
                ConditionPhraseConcept.phrase_key,
                ConditionPhraseConcept.trials.desc(),
                ConditionConcept.trials.desc(),
                ConditionConcept.id,
            )
        )
        for key, cid in evidence:
            best.setdefault(key, cid)
    return best


def _resolve_again(session: Session, keys: Sequence[str]) -> dict[str, str]:
    if not keys:
        return {}
    best = _best(session, keys)
    rows = session.execute(select(ConditionPhrase.key, ConditionPhrase.concept_id).where(ConditionPhrase.key.in_(keys)))
    current: dict[str, str | None] = {key: cid for key, cid in rows}
    changed = {k: c for k, c in best.items() if current.get(k) != c}
    if changed:
        session.execute(_SET_RESOLUTION, [{"k": k, "c": c} for k, c in sorted(changed.items())])
    return changed


def follow_concepts(session: Session, resolved: Mapping[str, str]) -> int:
    """Condition subscriptions still on a plain key that now resolves follow its concept (set-based).

    One UPDATE per phrase. A subscriber who already follows that concept keeps the old subscription as it
    is (it still matches by text), since one person cannot follow the same target twice.
    """
    if not resolved:
        return 0
    waiting = session.scalars(
        select(Subscription.target)
        .distinct()
        .where(Subscription.kind == SubscriptionKind.CONDITION.value, Subscription.target.in_(list(resolved)))
    ).all()
    other = aliased(Subscription)
    moved = 0
    for key in sorted(waiting):
        target = concept_target(resolved[key])
        result = session.execute(
            update(Subscription)
            .where(
                Subscription.kind == SubscriptionKind.CONDITION.value,
                Subscription.target == key,
                ~exists().where(
                    other.subscriber_id == Subscription.subscriber_id,
                    other.kind == SubscriptionKind.CONDITION.value,
                    other.target == target,
                ),
            )
            .values(target=target)
            .execution_options(synchronize_session=False)
        )
        moved += int(getattr(result, "rowcount", 0) or 0)
    return moved


def resolve(session: Session, phrase: str) -> str | None:
    """The concept id a phrase resolves to, or None while the vocabulary does not know it."""
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
    """The vocabulary's word for ``phrase`` (one query), or None when no record used it."""
    key = condition_key(phrase)
    if not key:
        return None
    row = session.execute(
        select(ConditionPhrase.label, ConditionPhrase.concept_id, ConditionConcept.term)
        .outerjoin(ConditionConcept, ConditionConcept.id == ConditionPhrase.concept_id)
        .where(ConditionPhrase.key == key)
    ).first()
    if row is None:
        return None
    label, concept, term = row
    return Vouched(key=key, name=term or label, concept=concept)


def concept_term(session: Session, concept: str) -> str | None:
    return session.scalar(select(ConditionConcept.term).where(ConditionConcept.id == concept))


def learn_stored_trials(session: Session, batch: int = 500) -> int:
    """Learn from stored trial versions never learned from (e.g. stored before the vocabulary existed)."""
    count = 0
    while True:
        missing = ~exists().where(TrialVocabulary.nct_id == Trial.nct_id)
        rows = session.execute(select(Trial.nct_id, Trial.record).where(missing).order_by(Trial.nct_id).limit(batch))
        items = list(rows)
        if not items:
            return count
        for nct_id, record in items:
            learn(session, nct_id, extract(record))
            count += 1
        session.flush()


# --- suggestions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    label: str  # a phrasing trials use, as written there: what the subscriber will see
    key: str  # its condition key
    concept: str | None  # the MeSH concept it resolves to, if any
    term: str | None  # that concept's term
    trials: int  # trials filed under the concept (or using the phrase, without a concept)
    trials_including_narrower: int  # ... plus those filed under a narrower concept


def suggest(session: Session, query: str, limit: int = 10) -> list[Suggestion]:
    """Conditions whose phrasing starts with ``query``, or has a word starting with it, most trials first.

    One suggestion per concept (or per phrase without one), labelled with the best-matching phrasing:
    a phrasing that starts with the query before one that merely contains it, then the most used.
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
    best: dict[str, tuple[tuple[int, int, str], Suggestion]] = {}
    for key, label, phrase_trials, cid, term, trials, broad, suffix in rows:
        prefix = suffix == key
        item = Suggestion(
            label=label,
            key=key,
            concept=cid,
            term=term,
            trials=int(trials if cid else phrase_trials),
            trials_including_narrower=int(broad if cid else phrase_trials),
        )
        order = (0 if prefix else 1, -int(phrase_trials), label.casefold())
        target = cid or key
        if target not in best or order < best[target][0]:
            best[target] = (order, item)
    ranked = sorted(best.values(), key=lambda pair: (-pair[1].trials, pair[0]))
    return [item for _, item in ranked[:limit]]
