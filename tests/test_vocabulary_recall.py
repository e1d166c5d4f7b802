"""Condition matching measured over every phrase the real records contain, NLM's indexing as the truth.

One follower per phrase (signed up through ``alerts.subscriptions.sign_up`` as the sponsor wrote it);
every record published as a ``trial.new_for_condition`` event, in NCT order; what each follower was
emailed is compared with the trials NLM filed under the phrase's concepts (``tests/support/nlm_truth``).
Two orders: the vocabulary learned from every record first (a running service), and the cold start
(empty vocabulary, sign-ups first, then the events). The figures are in docs/events.md.

The held-out test measures a cold start on half of the records, with the phrases of that half only (one
half in reverse order): the rules were written looking at all of them, and must not depend on that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from sqlalchemy import select

from alerts.db import transaction
from alerts.events import parse_event
from alerts.intake import accept
from alerts.models import Delivery, Event, Subscription
from alerts.pipeline import Rejected, ingest
from alerts.runtime import Runtime
from tests.conftest import InlineEnqueue, all_studies
from tests.factories import changed_event, follow, new_trial_event
from tests.support import nlm_truth
from tests.support.nlm_truth import Figures, Truth

PRECISION = 0.97
RECALL_WITH_VOCABULARY = 0.97
RECALL_COLD_START = 0.90


def _learn_first(runtime: Runtime, records: Sequence[Mapping[str, Any]]) -> None:
    """The vocabulary a running service has: every record seen once (as first versions)."""
    with transaction(runtime.engine) as session:
        for record in records:
            accept(session, parse_event(changed_event(dict(record))), runtime.renderer, runtime.site)


def measure(
    runtime: Runtime,
    inline: InlineEnqueue,
    records: Sequence[Mapping[str, Any]],
    truth: Truth,
    *,
    cold: bool,
    reverse: bool = False,
) -> Figures:
    records = sorted(records, key=nlm_truth.nct_id, reverse=reverse)
    if not cold:
        _learn_first(runtime, records)
    followers = {
        follow(runtime, f"follower{i}@example.org", condition=label): phrase
        for i, (phrase, label) in enumerate(truth.phrases.items())
    }
    for record in records:
        condition = (nlm_truth.conditions(record) or [record["protocolSection"]["identificationModule"]["briefTitle"]])[
            0
        ]
        event = new_trial_event(dict(record), condition, event_id=f"new-{nlm_truth.nct_id(record)}")
        outcome = ingest(runtime, event, inline, "test")
        assert not isinstance(outcome, Rejected), outcome
    with transaction(runtime.engine) as session:
        rows = session.execute(
            select(Delivery.subscription_id, Event.nct_id, Delivery.status)
            .join(Event, Event.id == Delivery.event_id)
            .join(Subscription, Subscription.id == Delivery.subscription_id)
        ).all()
    assert {status for _, _, status in rows} <= {"sent"}
    got: dict[str, set[str]] = {}
    for subscription_id, nct, _ in rows:
        got.setdefault(followers[subscription_id], set()).add(nct)
    return nlm_truth.score(truth, got)


def _report(name: str, figures: Figures) -> str:
    worst = sorted(figures.missed.items(), key=lambda item: -item[1])[:5]
    wrong = sorted(figures.wrong.items(), key=lambda item: -item[1])[:5]
    return f"{name}: {figures}; most missed {worst}; most wrongly sent {wrong}"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("cold", [False, True], ids=["vocabulary-first", "cold-start"])
def test_precision_and_recall_over_every_phrase_of_the_real_records(
    runtime: Runtime, inline: InlineEnqueue, cold: bool
) -> None:
    records = all_studies()
    truth = nlm_truth.truth(records)
    assert len(truth.phrases) >= 60  # every sponsor phrase NLM states a meaning for
    figures = measure(runtime, inline, records, truth, cold=cold)
    print(_report("cold start" if cold else "vocabulary first", figures))
    assert figures.precision >= PRECISION, _report("precision", figures)
    assert figures.recall >= (RECALL_COLD_START if cold else RECALL_WITH_VOCABULARY), _report("recall", figures)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("half", [0, 1])
def test_a_cold_start_on_half_of_the_records_in_either_order(
    runtime: Runtime, inline: InlineEnqueue, half: int
) -> None:
    """Half the records and their phrases only; half 1 in reverse order (what is learned first differs)."""
    records = [r for i, r in enumerate(sorted(all_studies(), key=nlm_truth.nct_id)) if i % 2 == half]
    truth = nlm_truth.truth(records)
    figures = measure(runtime, inline, records, truth, cold=True, reverse=half == 1)
    print(_report(f"half {half}, cold start{', newest first' if half else ''}", figures))
    assert figures.precision >= PRECISION, _report("precision", figures)
    assert figures.recall >= RECALL_COLD_START, _report("recall", figures)
