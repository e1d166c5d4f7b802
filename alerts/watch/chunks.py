"""One chunk of a registry page, applied in one transaction: the watcher's unit of work and of commit.

A chunk is a few hundred records of a ``/studies`` page (``ALERTS_WATCH_COMMIT_EVERY``). ``apply_chunk`` runs
``apply_page`` on them in one transaction together with the pass's running figures, so a pass killed anywhere
keeps exactly what committed; ``queue_accepted`` then queues what the chunk's events send. Both run in the
pass's own process or in one of its lanes (``alerts.watch.lanes``): nothing here depends on which.

Each record's ``watch_records`` row is the record's done marker: its content hash, and the start of the pass
that read it (``seen_at``). A pass that resumes before records it already committed (a lane's chunks commit
out of order; a page token expired) skips them without counting them twice.

Chunks applied side by side take row locks on different trials. What they share is serialized: the
vocabulary (``vocabulary.serialize_learning``: a chunk that teaches, or matches new trials by what the
vocabulary means, holds it until it commits) and the watcher's state row (updated last, just before commit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg
import structlog
from psycopg.types.json import set_json_loads
from sqlalchemy import TextClause, bindparam, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from alerts import intake, pipeline, vocabulary
from alerts.ctgov.client import loads
from alerts.db import session_factory
from alerts.events import (
    NEW_TRIAL_FOR_CONDITION,
    TRIAL_CHANGED,
    FieldError,
    InvalidEvent,
    TrialEvent,
    excerpt,
    parse_event,
)
from alerts.intake import Accepted
from alerts.listparam import one_of
from alerts.models import (
    Event,
    RejectedEvent,
    Subscription,
    SubscriptionKind,
    SubscriptionStatus,
    Trial,
    TrialVocabulary,
    UTCDateTime,
    WatchRecord,
    WatchState,
    utcnow,
)
from alerts.runtime import Runtime
from alerts.watch import lock
from alerts.watch.records import SOURCE, RegistryRecord

log = structlog.get_logger("alerts.watch")


def _marking(rows: str) -> TextClause:
    """The upsert of records' done marks, the rows taken from ``rows`` (VALUES or a SELECT)."""
    return text(
        f"INSERT INTO watch_records (nct_id, content_hash, last_update, seen_at) {rows} "
        "ON CONFLICT (nct_id) DO UPDATE SET content_hash = excluded.content_hash, "
        "last_update = excluded.last_update, seen_at = excluded.seen_at"
    ).bindparams(bindparam("seen_at", type_=UTCDateTime()))


_UPSERT_RECORD = _marking("VALUES (:nct_id, :content_hash, :last_update, :seen_at)")
# The same for a whole chunk in one statement on PostgreSQL (its columns as arrays): 200 rows pipelined one by
# one cost psycopg and the server a statement each.
_UPSERT_RECORDS = _marking(
    "SELECT r.nct_id, r.content_hash, r.last_update, :seen_at FROM unnest("
    "CAST(:ncts AS varchar[]), CAST(:hashes AS varchar[]), CAST(:days AS varchar[])"
    ") AS r(nct_id, content_hash, last_update)"
)
_KINDS = ((TRIAL_CHANGED, "changed"), (NEW_TRIAL_FOR_CONDITION, "new"))

# A chunk's reads, built once with its NCT IDs (or event keys) as one list parameter (alerts.listparam):
# the same statement text for every chunk, whatever its size, so PostgreSQL prepares each once.
_READ_MARKS = select(WatchRecord.nct_id, WatchRecord.content_hash, WatchRecord.seen_at).where(
    one_of(WatchRecord.nct_id, "ncts")
)
# The snapshots, locked in NCT order (chunks side by side then never wait on each other in a circle).
_LOCK_SNAPSHOTS = select(Trial).where(one_of(Trial.nct_id, "ncts")).order_by(Trial.nct_id).with_for_update()
_READ_VOCABULARIES = select(TrialVocabulary).where(one_of(TrialVocabulary.nct_id, "ncts"))
_PRESENT_KEYS = select(Event.idempotency_key).where(one_of(Event.idempotency_key, "keys"))
_FOLLOWED = (
    select(Subscription.target)
    .distinct()
    .where(
        Subscription.kind == SubscriptionKind.TRIAL.value,
        Subscription.status == SubscriptionStatus.ACTIVE.value,
        one_of(Subscription.target, "ncts"),
    )
)


@dataclass
class PageWork:
    """What one page did (inside its transaction) and the events to queue once it commits."""

    counts: Counter[str] = field(default_factory=Counter)
    max_seen: date | None = None
    accepted: list[tuple[TrialEvent, Accepted]] = field(default_factory=list)


class _DryRun(Exception):
    def __init__(self, work: PageWork) -> None:
        self.work = work


def _reject(session: Session, payload: dict[str, Any], errors: Sequence[FieldError]) -> bool:
    """Record a bad record as a rejected event, once per version (a re-read is not a new rejection)."""
    event_id = str(payload.get("event_id"))
    already = session.scalar(
        select(RejectedEvent.id).where(RejectedEvent.source == SOURCE, RejectedEvent.producer_event_id == event_id)
    )
    if already is not None:
        return False
    session.add(
        RejectedEvent(
            source=SOURCE,
            event_type=str(payload.get("type")),
            producer_event_id=event_id[:200],
            errors=[e.as_dict() for e in errors],
            payload_excerpt=excerpt(payload),
        )
    )
    log.warning("watch.record_rejected", event_id=event_id[:200], errors=[e.as_dict() for e in errors])
    return True


def apply_page(
    session: Session,
    studies: Sequence[Any],
    runtime: Runtime,
    *,
    window: date | None,
    bootstrap: bool,
    seen_at: str,
    pass_mark: datetime | None = None,
) -> PageWork:
    """One page's records, in the caller's transaction. Pure database work: nothing is queued here.

    ``pass_mark`` (the start of the pass) is written as each record's ``seen_at``: a record this pass
    already committed (same content, same mark) is skipped without being counted again.
    """
    work = PageWork()
    records = [RegistryRecord.of(s) for s in studies]
    ncts = sorted({r.nct_id for r in records if r.nct_id})
    hashes: dict[str, str] = {}
    done: set[str] = set()
    snapshots: dict[str, Trial | None] = dict.fromkeys(ncts)
    vocabularies: Sequence[TrialVocabulary] = ()
    if ncts:
        for nct, content_hash, marked in session.execute(_READ_MARKS, {"ncts": ncts}):
            hashes[str(nct)] = str(content_hash)
            if pass_mark is not None and marked == pass_mark:
                done.add(str(nct))
        # Only records that differ from the version last read become events (the others are skipped below).
        changed = [r for r in records if r.nct_id is None or hashes.get(r.nct_id) != r.content_hash]
        ncts = sorted({r.nct_id for r in changed if r.nct_id})
        snapshots = dict.fromkeys(ncts)
    if ncts:
        # What the intake reads per event, read once for the chunk (alerts.intake.Prefetched): the snapshots,
        # locked in NCT order; the trials' vocabulary rows (into the session's identity map); which event
        # ids exist; which trials anyone follows.
        for trial in session.scalars(_LOCK_SNAPSHOTS, {"ncts": ncts}):
            snapshots[trial.nct_id] = trial
        # Held until the page is done: the identity map keeps only weak references.
        vocabularies = session.scalars(_READ_VOCABULARIES, {"ncts": ncts}).all()
        keys = {f"{kind}:id:{r.event_id(short)}" for r in changed for kind, short in _KINDS}
        present = set(session.scalars(_PRESENT_KEYS, {"keys": sorted(keys)}))
        audience = set(session.scalars(_FOLLOWED, {"ncts": ncts}))
        # At most one event per changed record.
        ids = intake.reserve_event_ids(session, 0 if bootstrap else len(changed))
        session.info[intake.PREFETCHED] = intake.Prefetched(
            snapshots=dict(snapshots),
            absent_keys=keys - present,
            trial_audience=audience,
            event_ids=ids,
        )
    stored = {nct for nct, trial in snapshots.items() if trial is not None}
    rows: dict[str, dict[str, Any]] = {}
    now = utcnow()
    settings = runtime.settings
    # Each record's event (or why it is invalid), then what they all teach the vocabulary at once
    # (intake.learn_ahead), then each one through the intake in page order.
    parsed: list[tuple[RegistryRecord, bool, dict[str, Any] | None, TrialEvent | InvalidEvent | None]] = []
    for record in records:
        if record.nct_id is not None and hashes.get(record.nct_id) == record.content_hash:
            if record.nct_id in done:
                continue  # committed earlier in this very pass (and counted then): a resumed pass
            parsed.append((record, False, None, None))  # the version we already read (overlap, a re-run)
            continue
        known = record.nct_id in stored
        condition = None
        if not bootstrap and not known and window is not None and record.first_posted is not None:
            condition = record.condition() if record.first_posted >= window else None
        payload = record.new_trial_event(seen_at, condition) if condition else record.changed_event(seen_at)
        publish = not bootstrap and (known or condition is not None)
        try:
            event = parse_event(payload, serialized=record.canonical_event(payload))
        except InvalidEvent as exc:
            parsed.append((record, publish, payload, exc))
        else:
            parsed.append((record, publish, payload, event))
            stored.add(event.nct_id)
        if record.nct_id is not None:
            hashes[record.nct_id] = record.content_hash
    # New trials are matched by what the vocabulary means: no chunk beside this one may change that meaning
    # until this one commits (its catch-ups could not see our uncommitted events). A chunk that only teaches
    # takes the same lock when it first writes (learn_ahead).
    if any(publish and isinstance(e, TrialEvent) and e.type == NEW_TRIAL_FOR_CONDITION for _, publish, _, e in parsed):
        vocabulary.serialize_learning(session)
    intake.learn_ahead(session, [e for _, _, _, e in parsed if isinstance(e, TrialEvent)])
    for record, publish, body, parsed_event in parsed:
        work.counts["read"] += 1
        work.max_seen = later(work.max_seen, record.last_update_day)
        if body is None:
            work.counts["unchanged"] += 1
            continue
        if isinstance(parsed_event, InvalidEvent):
            work.counts["rejected"] += _reject(session, body, parsed_event.errors)
        elif parsed_event is not None:
            event = parsed_event
            if not publish:
                intake.store_baseline(session, event)
                work.counts["stored"] += 1
            else:
                outcome = intake.accept(session, event, runtime.renderer, runtime.site, settings.fanout_first_chunk)
                work.accepted.append((event, outcome))
                work.counts[f"published:{event.type}"] += 1
                work.counts[str(outcome.status)] += 1
                work.counts["recipients"] += outcome.recipients
        if record.nct_id is not None:
            rows[record.nct_id] = {
                "nct_id": record.nct_id,
                "content_hash": record.content_hash,
                "last_update": (record.last_update or "")[:10] or None,
                "seen_at": pass_mark or now,
            }
    session.info.pop(intake.PREFETCHED, None)
    del vocabularies
    if rows and session.get_bind().dialect.name == "postgresql":
        marks = list(rows.values())
        columns = {"ncts": "nct_id", "hashes": "content_hash", "days": "last_update"}
        arrays: dict[str, Any] = {name: [m[column] for m in marks] for name, column in columns.items()}
        session.execute(_UPSERT_RECORDS, arrays | {"seen_at": pass_mark or now})
    elif rows:
        session.execute(_UPSERT_RECORD, list(rows.values()))
    return work


def _fast_json(session: Session) -> None:
    """Read JSON columns (a chunk's snapshots, 200 records of ~10 KB) with ``client.loads`` on this
    PostgreSQL connection: the same values as psycopg's default json.loads, in a third of the time."""
    dbapi = session.connection().connection.dbapi_connection
    if isinstance(dbapi, psycopg.Connection):
        set_json_loads(loads, dbapi)


def state(session: Session) -> WatchState:
    """The watcher's state row, locked for the caller's transaction."""
    found = session.get(WatchState, lock.STATE, with_for_update=True)
    assert found is not None, "lock.ensure_state creates it"
    return found


def merge(counts: dict[str, Any], more: Counter[str]) -> dict[str, int]:
    merged = Counter({k: int(v) for k, v in counts.items()})
    merged.update(more)
    return dict(sorted(merged.items()))


def later(a: date | None, b: date | None) -> date | None:
    """The later of two days, either of which may be unknown."""
    return b if a is None or (b is not None and b > a) else a


def apply_chunk(
    runtime: Runtime,
    studies: Sequence[Any],
    owner: str,
    *,
    window: date | None,
    bootstrap: bool,
    seen_at: str,
    pass_mark: datetime | None,
    resume_at: tuple[str | None, int] | None,
    dry_run: bool,
) -> PageWork:
    """Apply records with the pass's figures in one transaction (retried on a lost race or a deadlock).

    ``resume_at`` (a page token and an offset into that page) is where a pass killed after this commit goes
    on; None leaves that to the caller (lanes: chunks commit out of order, the pass moves it per page).
    The lock's lease and the state row are written last: chunks side by side hold that row a moment only.
    """
    settings = runtime.settings
    for attempt in range(3):
        try:
            with session_factory(runtime.engine)() as session, session.begin():
                _fast_json(session)
                work = apply_page(
                    session, studies, runtime, window=window, bootstrap=bootstrap, seen_at=seen_at, pass_mark=pass_mark
                )
                if dry_run:
                    raise _DryRun(work)  # rolls the page back
                # Commit nothing unless we still hold the watcher's lock.
                lock.renew(session, owner, settings.watch_lock_s)
                current = state(session)
                if resume_at is not None:
                    current.pass_page_token, current.pass_page_offset = resume_at
                current.pass_counts = merge(current.pass_counts or {}, work.counts)
                current.pass_max_seen = later(current.pass_max_seen, work.max_seen)
            return work
        except _DryRun as dry:
            return dry.work
        except IntegrityError:
            # Another producer stored the same trial or event at the same moment: the page again finds it.
            if attempt == 2:
                raise
        except OperationalError as exc:
            # Two chunks side by side waited on each other (PostgreSQL chose this one): again, after the other.
            if attempt == 2 or not isinstance(exc.orig, psycopg.errors.DeadlockDetected):
                raise
    raise AssertionError("unreachable")


def queue_accepted(runtime: Runtime, enqueue: pipeline.Enqueue, work: PageWork) -> None:
    """Queue what a committed chunk's events send (a no-op's catch-ups too: its chunk taught a phrase more)."""
    for event, outcome in work.accepted:
        if outcome.status != "no_op" or outcome.caught_up:
            pipeline.after_commit(runtime, event, outcome, enqueue)
