"""Matching stays cheap: an event that matches nobody costs well under 20 ms among many subscribers."""

from __future__ import annotations

import statistics
import time

from sqlalchemy import insert, text

from alerts.db import transaction
from alerts.events import parse_event
from alerts.intake import accept
from alerts.models import Subscriber, Subscription, SubscriptionFilter
from alerts.runtime import Runtime
from tests.conftest import all_studies
from tests.factories import changed_event, new_trial_event

SUBSCRIBERS = 20_000


def test_an_event_that_matches_nobody_costs_under_20_ms(runtime: Runtime) -> None:
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

    timings = []
    for n, record in enumerate(records):
        event = parse_event(new_trial_event(record, "Nothing anyone follows", event_id=f"nobody-{n}"))
        started = time.perf_counter()
        with transaction(runtime.engine) as session:
            outcome = accept(session, event, runtime.renderer, runtime.site)
        timings.append(time.perf_counter() - started)
        assert (outcome.status, outcome.recipients) == ("fanned_out", 0)
    assert statistics.median(timings) < 0.020, [round(t * 1000, 1) for t in timings]
