"""Matching stays cheap: an event that matches nobody does a small, fixed amount of work among many subscribers.

The time itself (< 20 ms of worker time) is measured by benchmarks/fanout.py ("event matching nobody"),
not asserted here: speed goals live in benchmarks, not in timed unit tests.
"""

from __future__ import annotations

import pytest
from sqlalchemy import event, insert, text

from alerts.db import transaction
from alerts.events import parse_event
from alerts.intake import accept
from alerts.models import Subscriber, Subscription, SubscriptionFilter
from alerts.runtime import Runtime
from tests.conftest import all_studies
from tests.factories import changed_event, new_trial_event

SUBSCRIBERS = 20_000


def test_an_event_that_matches_nobody_does_fixed_work(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    records = all_studies()[:20]
    with transaction(runtime.engine) as session:
        for record in records:  # known trials: their vocabulary is learned already
            accept(session, parse_event(changed_event(record)), runtime.renderer, runtime.site)
        session.execute(
            insert(Subscriber),
            [
                {"id": i, "email": f"s{i}@example.org", "email_hash": f"{i:064d}", "manage_token": f"m{i}"}
                for i in range(1, SUBSCRIBERS + 1)
            ],
        )
        # Many followers of concepts and phrases these trials do not have, some with filters.
        session.execute(
            insert(Subscription),
            [
                {
                    "id": i,
                    "subscriber_id": i,
                    "kind": "condition",
                    "target": f"mesh:D9{i % 5000:05d}" if i % 2 else f"condition {i % 3000}",
                    "label": "Something else",
                    "status": "active",
                    "unsubscribe_token": f"u{i}",
                    "recruiting_only": i % 10 == 0,
                    "include_narrower": i % 7 == 0,
                }
                for i in range(1, SUBSCRIBERS + 1)
            ],
        )
        session.execute(
            insert(SubscriptionFilter),
            [
                {"subscription_id": i, "kind": "country", "value": "france", "label": "France"}
                for i in range(1, SUBSCRIBERS + 1, 5)
            ],
        )
    with runtime.engine.connect() as connection:
        connection.execute(text("ANALYZE"))  # as autovacuum would have, long before 20,000 subscribers
        connection.commit()

    import premailer

    rendered: list[int] = []
    original = premailer.Premailer.transform
    monkeypatch.setattr(premailer.Premailer, "transform", lambda self, *a, **k: rendered.append(1) or original(self))
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", count)
    per_event = []
    for n, record in enumerate(records):
        parsed = parse_event(new_trial_event(record, "Nothing anyone follows", event_id=f"nobody-{n}"))
        before = len(statements)
        with transaction(runtime.engine) as session:
            outcome = accept(session, parsed, runtime.renderer, runtime.site)
        per_event.append(len(statements) - before)
        assert (outcome.status, outcome.recipients) == ("fanned_out", 0)
    event.remove(runtime.engine, "before_cursor_execute", count)
    # Nothing rendered, and a handful of statements whatever the number of subscribers: no per-subscriber work.
    assert rendered == []
    assert max(per_event) <= 30, per_event
    # (A new trial's INSERT starts with the nearest-sites CTE: "WITH near AS ... INSERT INTO deliveries".)
    inserts = [s for s in statements if "INSERT INTO DELIVERIES" in s.upper()]
    assert len(inserts) == len(records)
