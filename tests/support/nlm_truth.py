"""What NLM's own indexing says a condition phrase means: the truth condition matching is measured against.

Written independently of ``alerts.vocabulary`` (no tally, no thresholds, no inference from contained
words), straight from each record's ``derivedSection.conditionBrowseModule``:

* NLM **states** that a phrase means a concept when a browse leaf of a concept the study is filed under
  (``meshes``) has the phrase as ``asFound``, or when the phrase is that concept's own term.
* Concept A is an **ancestor** of concept B when every record filed under B lists A among its
  ``meshes`` or ``ancestors``, and at least one lists it among ``ancestors`` (a record's ``ancestors``
  are those of all its concepts together, so one record alone can't tell whose they are).
* A phrase means every concept NLM stated for it in any record, except a concept that is an ancestor of
  another one of them (the phrase names the specific one).
* The phrases measured are the sponsors' condition phrases (``conditionsModule.conditions``) NLM stated
  a meaning for somewhere.
* The trials expected for a phrase: those filed under one of its concepts, and those not indexed by NLM
  at all that list the phrase itself (for those, the sponsor's words are all there is).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_MESH_ID = re.compile(r"^D0*(\d{1,9})$")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def key(phrase: str) -> str:
    """Case, accents and punctuation removed (the same normalization the registry's users expect)."""
    text = "".join(c for c in unicodedata.normalize("NFKD", phrase) if not unicodedata.combining(c))
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())


def mesh_id(raw: Any) -> str | None:
    match = _MESH_ID.match(raw.strip().upper()) if isinstance(raw, str) else None
    return f"D{int(match.group(1)):06d}" if match else None


def nct_id(record: Mapping[str, Any]) -> str:
    return str(record["protocolSection"]["identificationModule"]["nctId"])


def _module(record: Mapping[str, Any]) -> Mapping[str, Any]:
    derived = record.get("derivedSection") or {}
    return derived.get("conditionBrowseModule") or {}


def _ids(items: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items or []:
        cid = mesh_id(item.get("id"))
        if cid and isinstance(item.get("term"), str):
            found.setdefault(cid, item["term"])
    return found


def meshes(record: Mapping[str, Any]) -> set[str]:
    return set(_ids(_module(record).get("meshes")))


def ancestors(record: Mapping[str, Any]) -> set[str]:
    return set(_ids(_module(record).get("ancestors"))) - meshes(record)


def conditions(record: Mapping[str, Any]) -> list[str]:
    """The sponsor's conditions as written (first spelling of each key)."""
    seen: dict[str, str] = {}
    for item in record["protocolSection"].get("conditionsModule", {}).get("conditions", []):
        if isinstance(item, str) and key(item):
            seen.setdefault(key(item), " ".join(item.split()))
    return list(seen.values())


def stated(record: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(phrase key, concept) pairs NLM states in this record."""
    by_term = {term: cid for cid, term in _ids(_module(record).get("meshes")).items()}
    pairs = {(key(term), cid) for term, cid in by_term.items()}
    for leaf in _module(record).get("browseLeaves") or []:
        found, name = leaf.get("asFound"), leaf.get("name")
        if isinstance(found, str) and name in by_term and key(found):
            pairs.add((key(found), by_term[name]))
    return pairs


@dataclass(frozen=True)
class Truth:
    phrases: dict[str, str]  # phrase key -> the sponsor's spelling (what a follower types)
    concepts: dict[str, frozenset[str]]  # phrase key -> the concepts it means
    expected: dict[str, frozenset[str]]  # phrase key -> NCT IDs of the trials a follower should get


def truth(records: Sequence[Mapping[str, Any]]) -> Truth:
    statements: dict[str, set[str]] = defaultdict(set)
    filed: Counter[str] = Counter()
    together: Counter[tuple[str, str]] = Counter()
    as_ancestor: Counter[tuple[str, str]] = Counter()
    for record in records:
        for phrase, cid in stated(record):
            statements[phrase].add(cid)
        own, broader = meshes(record), ancestors(record)
        for b in own:
            filed[b] += 1
            together.update((b, a) for a in (own | broader) - {b})
            as_ancestor.update((b, a) for a in broader)

    def is_ancestor(b: str, a: str) -> bool:
        return together[(b, a)] == filed[b] and as_ancestor[(b, a)] > 0

    meaning = {
        phrase: frozenset(a for a in ids if not any(is_ancestor(b, a) for b in ids if b != a))
        for phrase, ids in statements.items()
    }
    phrases: dict[str, str] = {}
    for record in records:
        for label in conditions(record):
            if key(label) in meaning:
                phrases.setdefault(key(label), label)
    expected = {
        phrase: frozenset(
            nct_id(r)
            for r in records
            if meshes(r) & meaning[phrase] or (not meshes(r) and phrase in {key(c) for c in conditions(r)})
        )
        for phrase in phrases
    }
    return Truth(phrases=dict(sorted(phrases.items())), concepts={p: meaning[p] for p in phrases}, expected=expected)


@dataclass(frozen=True)
class Figures:
    phrases: int
    sent: int  # (follower, trial) pairs emailed
    right: int  # ... of which expected
    expected: int
    missed: dict[str, int]  # phrase key -> expected trials not sent
    wrong: dict[str, int]  # phrase key -> trials sent that were not expected

    @property
    def precision(self) -> float:
        return self.right / self.sent if self.sent else 1.0

    @property
    def recall(self) -> float:
        return self.right / self.expected if self.expected else 1.0

    def __str__(self) -> str:
        return (
            f"{self.phrases} phrases: precision {self.precision:.3f} ({self.right}/{self.sent}), "
            f"recall {self.recall:.3f} ({self.right}/{self.expected})"
        )


def score(truth: Truth, got: Mapping[str, Iterable[str]]) -> Figures:
    """``got``: phrase key -> NCT IDs its follower was emailed about."""
    sent = right = expected = 0
    missed: dict[str, int] = {}
    wrong: dict[str, int] = {}
    for phrase, want in truth.expected.items():
        have = set(got.get(phrase, ()))
        sent += len(have)
        right += len(have & want)
        expected += len(want)
        if want - have:
            missed[phrase] = len(want - have)
        if have - want:
            wrong[phrase] = len(have - want)
    return Figures(len(truth.expected), sent, right, expected, missed, wrong)
