"""Counters every process agrees on: provider answers by code, timeouts, emails sent, ambiguous re-sends.

Stored in the database (``counter_increments``), not in each process's memory: web, workers and beat are
separate processes (separate containers in compose), so per-process counters would each hold a slice and
reset on restart, and prometheus_client's multiprocess mode needs one shared folder, which separate
containers do not have. The database is already the one place every process writes to.

A sender appends one row per counter it changed, per send batch, in the transaction that records the
batch's outcomes: counting costs one multi-row INSERT per batch (not a round trip per recipient), adds no
hot row for concurrent workers to wait on, and counts exactly what was recorded. Totals and recent windows
are sums; ``fold`` (run by maintenance) merges old increments into one row per counter and label.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import Insert, delete, func, insert, select
from sqlalchemy.orm import Session

from alerts.models import CounterIncrement, utcnow

# Names (and what their label holds).
SENT = "sent"  # recipients the provider accepted (label "")
PROVIDER_ANSWERS = "provider_answers"  # requests the provider answered, by status code ("202", "429", "250")
PROVIDER_TIMEOUTS = "provider_timeouts"  # requests sent without an answer in time: acceptance unknown
PROVIDER_UNREACHABLE = "provider_unreachable"  # requests that could not be made (connection refused...)
AMBIGUOUS_RESENDS = "ambiguous_resends"  # recipients sent again though the first try may have arrived,
# by reason: "timeout" (no answer to the request) or "lease_expired" (a worker died mid-send)

Key = tuple[str, str]  # (name, label)

# Increments younger than this stay as they are: status windows reach back a day at most.
KEEP_RAW = timedelta(days=2)


def insert_rows(increments: Mapping[Key, int], at: datetime | None = None) -> Insert | None:
    """One multi-row INSERT of the non-zero increments (None when there are none).

    A caller already writing in PostgreSQL can attach it to its own statement as a CTE (see
    sending.record_results) and save the round trip.
    """
    when = at or utcnow()
    rows = [
        {"name": name, "label": label, "value": value, "at": when}
        for (name, label), value in increments.items()
        if value
    ]
    return insert(CounterIncrement).values(rows) if rows else None


def add(session: Session, increments: Mapping[Key, int], at: datetime | None = None) -> None:
    """Append the non-zero increments, in one statement."""
    statement = insert_rows(increments, at)
    if statement is not None:
        session.execute(statement)


def totals(session: Session) -> dict[Key, int]:
    """Every counter's total since the installation began."""
    query = select(CounterIncrement.name, CounterIncrement.label, func.sum(CounterIncrement.value)).group_by(
        CounterIncrement.name, CounterIncrement.label
    )
    return {(str(name), str(label)): int(total) for name, label, total in session.execute(query)}


def since(session: Session, name: str, start: datetime) -> dict[str, int]:
    """One counter's increments since ``start``, by label."""
    query = (
        select(CounterIncrement.label, func.sum(CounterIncrement.value))
        .where(CounterIncrement.name == name, CounterIncrement.at >= start)
        .group_by(CounterIncrement.label)
    )
    return {str(label): int(total) for label, total in session.execute(query)}


def last(session: Session, name: str) -> datetime | None:
    """When the counter last grew (from the (name, at) index)."""
    value: datetime | None = session.scalar(select(func.max(CounterIncrement.at)).where(CounterIncrement.name == name))
    return value


def fold(session: Session, now: datetime | None = None) -> int:
    """Merge increments older than KEEP_RAW into one row per counter and label; returns rows removed.

    Totals do not change; only the detail no window reads any more goes. Nothing happens while every old
    row is already a folded one.
    """
    cutoff = (now or utcnow()) - KEEP_RAW
    old = CounterIncrement.at < cutoff
    groups = session.execute(
        select(
            CounterIncrement.name,
            CounterIncrement.label,
            func.sum(CounterIncrement.value),
            func.max(CounterIncrement.at),
            func.count(),
        )
        .where(old)
        .group_by(CounterIncrement.name, CounterIncrement.label)
    ).all()
    if all(int(count) == 1 for *_, count in groups):
        return 0
    session.execute(delete(CounterIncrement).where(old).execution_options(synchronize_session=False))
    session.execute(
        insert(CounterIncrement),
        [{"name": name, "label": label, "value": int(total), "at": at} for name, label, total, at, _ in groups],
    )
    return sum(int(count) for *_, count in groups) - len(groups)
