"""Prometheus metrics, computed from the database and the broker at scrape time.

Web and worker processes are many; the database is the one place that knows every event and delivery, so
the figures are read from it rather than from per-process counters that would each see a slice. Counters of
things that happen (provider answers, timeouts, emails sent, ambiguous re-sends) are appended to the
database by whoever counted them (alerts.counters), so any web process reports the same totals.

A figure that cannot be read is left out of the scrape (absent, not 0 and not NaN): ``alerts_queue_depth``
for a queue the broker did not answer for, ``alerts_workers_online`` when workers cannot be asked (the
filesystem broker, or the broker down), ``alerts_last_send_timestamp_seconds`` before the first send.
Alert on ``absent(...)`` where that matters; ``alerts_broker_up`` says whether the broker answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from celery import Celery
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from alerts import counters, signups
from alerts.config import Settings
from alerts.db import transaction
from alerts.models import Delivery, DeliveryStatus, Event, RejectedEvent
from alerts.status import delivery_figures, latency_histogram, queue_depths, workers
from alerts.watch import status as watch_status


class AlertsCollector(Collector):
    def __init__(self, engine: Engine, app: Celery, settings: Settings | None = None) -> None:
        self.engine = engine
        self.app = app
        self.settings = settings  # with settings: the registry watcher's figures too

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "alerts_events", "Events received, by type and outcome", labels=["type", "outcome"]
        )
        with transaction(self.engine) as session:
            for event_type, status, n in session.execute(
                select(Event.type, Event.status, func.count()).group_by(Event.type, Event.status)
            ):
                events.add_metric([str(event_type), str(status)], int(n))
            for event_type, n in session.execute(
                select(RejectedEvent.event_type, func.count()).group_by(RejectedEvent.event_type)
            ):
                events.add_metric([str(event_type or "unknown"), "rejected"], int(n))
            failed_now = GaugeMetricFamily(
                "alerts_failed_deliveries", "Deliveries failed now (until retried), by provider code", labels=["code"]
            )
            for code, n in session.execute(
                select(Delivery.error_code, func.count())
                .where(Delivery.status == DeliveryStatus.FAILED.value)
                .group_by(Delivery.error_code)
            ):
                failed_now.add_metric([str(code or "none")], int(n))
            totals = counters.totals(session)
            last_sent = counters.last(session, counters.SENT)
        yield events
        yield failed_now
        yield from self._counters(totals)
        if last_sent is not None:
            yield GaugeMetricFamily(
                "alerts_last_send_timestamp_seconds",
                "When the provider last accepted an email (Unix time)",
                value=last_sent.timestamp(),
            )

        by_status, oldest, stuck, _per_row_retries, _top, suppressions = delivery_figures(self.engine)
        deliveries = GaugeMetricFamily("alerts_deliveries", "Deliveries by status", labels=["status"])
        for status, n in by_status.items():
            deliveries.add_metric([status], n)
        yield deliveries
        yield GaugeMetricFamily(
            "alerts_oldest_undelivered_seconds", "Age of the oldest queued or sending delivery", value=oldest or 0.0
        )
        yield GaugeMetricFamily("alerts_stuck_sending", "Deliveries in sending past their lease", value=stuck)
        yield GaugeMetricFamily("alerts_suppressions", "Suppressed addresses", value=suppressions)
        with transaction(self.engine) as session:
            waiting, oldest_signup = signups.waiting(session)
        yield GaugeMetricFamily("alerts_signups_waiting", "Sign-ups not yet decided by a worker", value=waiting)
        yield GaugeMetricFamily(
            "alerts_oldest_signup_seconds", "Age of the oldest undecided sign-up (0: none)", value=oldest_signup or 0.0
        )

        buckets, count, total = latency_histogram(self.engine)
        histogram = HistogramMetricFamily(
            "alerts_send_latency_seconds", "From delivery created to accepted by the transport (last hour)"
        )
        histogram.add_metric([], [(str(b), float(n)) for b, n in buckets] + [("+Inf", float(count))], total)
        yield histogram

        depths, broker_error = queue_depths(self.app)
        queue = GaugeMetricFamily("alerts_queue_depth", "Messages waiting in a broker queue", labels=["queue"])
        for name, depth in depths.items():
            if depth is not None:
                queue.add_metric([name], depth)
        yield queue
        yield GaugeMetricFamily("alerts_broker_up", "1 if the broker answered", value=0 if broker_error else 1)
        if broker_error is None:
            online = workers(self.app)
            if online.available:
                yield GaugeMetricFamily(
                    "alerts_workers_online", "Celery workers that answered a ping", value=len(online.online)
                )
        if self.settings is not None:
            yield from watch_metrics(watch_status.collect(self.engine, self.settings))

    @staticmethod
    def _counters(totals: dict[counters.Key, int]) -> Iterator[Metric]:
        answers = CounterMetricFamily(
            "alerts_provider_answers", "Requests the provider answered, by status code", labels=["code"]
        )
        errors = CounterMetricFamily(
            "alerts_provider_errors", "Provider answers with an error status (4xx, 5xx), by code", labels=["code"]
        )
        resends = CounterMetricFamily(
            "alerts_ambiguous_resends",
            "Recipients sent again though the first try may have been accepted, by reason (timeout, lease_expired)",
            labels=["reason"],
        )
        by_reason = {"timeout": 0, "lease_expired": 0}
        for (name, label), value in sorted(totals.items()):
            if name == counters.PROVIDER_ANSWERS:
                answers.add_metric([label], value)
                if label.isdigit() and int(label) >= 400:
                    errors.add_metric([label], value)
            elif name == counters.AMBIGUOUS_RESENDS:
                by_reason[label] = by_reason.get(label, 0) + value
        for reason, value in by_reason.items():
            resends.add_metric([reason], value)
        yield answers
        yield errors
        yield resends
        yield CounterMetricFamily(
            "alerts_ambiguous_retries",
            "All ambiguous re-sends (the sum of alerts_ambiguous_resends_total)",
            value=sum(by_reason.values()),
        )
        yield CounterMetricFamily(
            "alerts_provider_timeouts",
            "Requests sent without an answer in time (acceptance unknown)",
            value=totals.get((counters.PROVIDER_TIMEOUTS, ""), 0),
        )
        yield CounterMetricFamily(
            "alerts_provider_unreachable",
            "Requests that could not be made (connection refused, DNS)",
            value=totals.get((counters.PROVIDER_UNREACHABLE, ""), 0),
        )
        yield CounterMetricFamily(
            "alerts_emails_sent", "Emails the provider accepted", value=totals.get((counters.SENT, ""), 0)
        )


def watch_metrics(watch: watch_status.WatchStatus) -> Iterator[Metric]:
    """The registry watcher: its last pass's figures, as gauges (each pass replaces them)."""
    last = watch.last_pass or {}
    counts = last.get("counts") or {}
    yield GaugeMetricFamily("alerts_watch_running", "1 while a watcher pass holds the lock", value=int(watch.running))
    yield GaugeMetricFamily(
        "alerts_watch_last_pass_ok",
        "1 if the last watcher pass finished or found nothing new",
        value=int(last.get("outcome") in ("finished", "up_to_date")),
    )
    if watch.last_success_at:
        yield GaugeMetricFamily(
            "alerts_watch_last_success_timestamp_seconds",
            "When the last watcher pass finished well (Unix time)",
            value=datetime.fromisoformat(watch.last_success_at).timestamp(),
        )
    records = GaugeMetricFamily(
        "alerts_watch_records", "Records of the last watcher pass by outcome", labels=["outcome"]
    )
    for name in ("read", "unchanged", "stored", "rejected"):
        records.add_metric([name], int(counts.get(name, 0)))
    yield records
    events = GaugeMetricFamily(
        "alerts_watch_events", "Events the last watcher pass published, by type", labels=["type"]
    )
    for event_type in ("trial.changed", "trial.new_for_condition"):
        events.add_metric([event_type], int(counts.get(f"published:{event_type}", 0)))
    yield events
    yield GaugeMetricFamily(
        "alerts_watch_retries", "Registry requests retried in the last watcher pass", value=int(last.get("retries", 0))
    )
