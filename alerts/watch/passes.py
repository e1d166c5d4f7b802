"""One watcher pass: from the registry's ``/version`` and ``/studies`` pages to events through the intake.

A pass, in order:

1. take the watcher's lock (``alerts.watch.lock``) - a pass already running means this one does nothing;
2. ``GET /version``: when ``dataTimestamp`` is the one the last finished pass read, stop (nothing new);
3. walk ``GET /studies`` with ``filter.advanced=AREA[LastUpdatePostDate]RANGE[<cursor>,MAX]`` page by page.
   Each page is applied in chunks of ``ALERTS_WATCH_COMMIT_EVERY`` records, each chunk in ONE transaction
   with where the pass goes on (a page token and an offset into that page) and the running figures
   (``apply_page``), then its events are queued for sending (``pipeline.after_commit``): memory stays one
   page whatever the total, and a pass killed anywhere resumes at the first record not committed;
4. at the end, move the cursor to the last LastUpdatePostDate seen (the next pass re-reads that day: dates
   have no time, and the deterministic event ids absorb the overlap) and remember the data timestamp.

Per record (``apply_page``): identical to the version last read -> skipped; a trial we have a snapshot of
-> ``trial.changed`` (the intake diffs it with the snapshot, so noise is a ``no_op``); a trial never seen
and first posted inside the window -> ``trial.new_for_condition``; any other trial never seen -> stored as
the baseline for later changes, telling nobody; a record that fails the event contract -> rejected like any
bad event (``alerts events rejected``) and the pass goes on. A bootstrap pass (the first one, or
``--bootstrap``) stores and learns from every record, telling nobody.

A page that stays broken after the client's retries, or a registry that stays down, ends the pass with its
reason recorded (``alerts status``) and the pass's place kept: the next pass resumes there.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import structlog
from psycopg.types.json import set_json_loads
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alerts import intake, pipeline
from alerts.ctgov.client import Page, RegistryClient, RegistryError, TokenRefused, loads
from alerts.db import session_factory, transaction
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

_UPSERT_RECORD = text(
    "INSERT INTO watch_records (nct_id, content_hash, last_update, seen_at) "
    "VALUES (:nct_id, :content_hash, :last_update, :seen_at) "
    "ON CONFLICT (nct_id) DO UPDATE SET content_hash = excluded.content_hash, "
    "last_update = excluded.last_update, seen_at = excluded.seen_at"
).bindparams(bindparam("seen_at", type_=UTCDateTime()))
_KINDS = ((TRIAL_CHANGED, "changed"), (NEW_TRIAL_FOR_CONDITION, "new"))
BOOTSTRAP_SORT = "LastUpdatePostDate:desc"  # a limited bootstrap keeps the most recently active trials


@dataclass
class PageWork:
    """What one page did (inside its transaction) and the events to queue once it commits."""

    counts: Counter[str] = field(default_factory=Counter)
    max_seen: date | None = None
    accepted: list[tuple[TrialEvent, Accepted]] = field(default_factory=list)


@dataclass
class PassReport:
    outcome: str  # finished | up_to_date | busy | failed | dry_run
    reason: str | None = None
    bootstrap: bool = False
    window: str | None = None  # first LastUpdatePostDate read (None: every record, a bootstrap)
    data_timestamp: str | None = None
    resumed: bool = False
    pages: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    cursor: str | None = None  # where the next pass starts
    started_at: str = ""
    finished_at: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _DryRun(Exception):
    def __init__(self, work: PageWork) -> None:
        self.work = work


def _seen_at(data_timestamp: str | None) -> str:
    """The registry's data timestamp (UTC, no offset written) as the events' occurred_at."""
    if data_timestamp:
        try:
            parsed = datetime.fromisoformat(data_timestamp)
        except ValueError:
            parsed = None
        if parsed is not None:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return utcnow().isoformat()


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
) -> PageWork:
    """One page's records, in the caller's transaction. Pure database work: nothing is queued here."""
    work = PageWork()
    records = [RegistryRecord.of(s) for s in studies]
    ncts = sorted({r.nct_id for r in records if r.nct_id})
    hashes: dict[str, str] = {}
    snapshots: dict[str, Trial | None] = dict.fromkeys(ncts)
    vocabularies: Sequence[TrialVocabulary] = ()
    if ncts:
        hashes = {
            str(n): str(h)
            for n, h in session.execute(
                select(WatchRecord.nct_id, WatchRecord.content_hash).where(WatchRecord.nct_id.in_(ncts))
            )
        }
        # Only records that differ from the version last read become events (the others are skipped below).
        changed = [r for r in records if r.nct_id is None or hashes.get(r.nct_id) != r.content_hash]
        ncts = sorted({r.nct_id for r in changed if r.nct_id})
        snapshots = dict.fromkeys(ncts)
    if ncts:
        # What the intake reads per event, read once for the chunk (alerts.intake.Prefetched): the snapshots,
        # locked in NCT order; the trials' vocabulary rows (into the session's identity map); which event
        # ids exist; which trials anyone follows.
        locked = select(Trial).where(Trial.nct_id.in_(ncts)).order_by(Trial.nct_id).with_for_update()
        for trial in session.scalars(locked):
            snapshots[trial.nct_id] = trial
        # Held until the page is done: the identity map keeps only weak references.
        vocabularies = session.scalars(select(TrialVocabulary).where(TrialVocabulary.nct_id.in_(ncts))).all()
        keys = {f"{kind}:id:{r.event_id(short)}" for r in changed for kind, short in _KINDS}
        present = set(session.scalars(select(Event.idempotency_key).where(Event.idempotency_key.in_(keys))))
        followed = (
            select(Subscription.target)
            .distinct()
            .where(
                Subscription.kind == SubscriptionKind.TRIAL.value,
                Subscription.status == SubscriptionStatus.ACTIVE.value,
                Subscription.target.in_(ncts),
            )
        )
        audience = set(session.scalars(followed))
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
            parsed.append((record, False, None, None))  # the version we already read (overlap, a re-run)
            continue
        known = record.nct_id in stored
        condition = None
        if not bootstrap and not known and window is not None and record.first_posted is not None:
            condition = record.condition() if record.first_posted >= window else None
        payload = record.new_trial_event(seen_at, condition) if condition else record.changed_event(seen_at)
        publish = not bootstrap and (known or condition is not None)
        try:
            event = parse_event(payload)
        except InvalidEvent as exc:
            parsed.append((record, publish, payload, exc))
        else:
            parsed.append((record, publish, payload, event))
            stored.add(event.nct_id)
        if record.nct_id is not None:
            hashes[record.nct_id] = record.content_hash
    intake.learn_ahead(session, [e for _, _, _, e in parsed if isinstance(e, TrialEvent)])
    for record, publish, body, parsed_event in parsed:
        work.counts["read"] += 1
        if record.last_update_day is not None and (work.max_seen is None or record.last_update_day > work.max_seen):
            work.max_seen = record.last_update_day
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
                "seen_at": now,
            }
    session.info.pop(intake.PREFETCHED, None)
    del vocabularies
    if rows:
        session.execute(_UPSERT_RECORD, list(rows.values()))
    return work


def _fast_json(session: Session) -> None:
    """Read JSON columns (a chunk's snapshots, 200 records of ~10 KB) with ``client.loads`` on this
    PostgreSQL connection: the same values as psycopg's default json.loads, in a third of the time."""
    dbapi = session.connection().connection.dbapi_connection
    if isinstance(dbapi, psycopg.Connection):
        set_json_loads(loads, dbapi)


def _state(session: Session) -> WatchState:
    state = session.get(WatchState, lock.STATE, with_for_update=True)
    assert state is not None, "lock.ensure_state creates it"
    return state


def _merge(counts: dict[str, Any], more: Counter[str]) -> dict[str, int]:
    merged = Counter({k: int(v) for k, v in counts.items()})
    merged.update(more)
    return dict(sorted(merged.items()))


class Watcher:
    """Runs passes for one runtime; the client is built per pass unless one is handed in (tests)."""

    def __init__(
        self,
        runtime: Runtime,
        enqueue: pipeline.Enqueue,
        client_factory: Callable[[Callable[[], None] | None], RegistryClient] | None = None,
    ) -> None:
        self.runtime = runtime
        self.enqueue = enqueue
        self.client_factory = client_factory or self._client

    def _client(self, alive: Callable[[], None] | None) -> RegistryClient:
        s = self.runtime.settings
        return RegistryClient(
            s.ctgov_url,
            contact=s.ctgov_contact,
            rate_per_s=s.ctgov_rate_per_s,
            timeout_s=s.ctgov_timeout_s,
            retries=s.ctgov_retries,
            retry_base_s=s.ctgov_retry_base_s,
            alive=alive,
        )

    def run(self, *, bootstrap: bool = False, since: date | None = None, dry_run: bool = False) -> PassReport:
        engine, settings = self.runtime.engine, self.runtime.settings
        started, clock = utcnow(), time.perf_counter()
        report = PassReport(outcome="dry_run" if dry_run else "finished", started_at=started.isoformat())
        owner = lock.owner_id()
        if dry_run:
            lock.ensure_state(engine)
        elif not lock.acquire(engine, owner, settings.watch_lock_s):
            with transaction(engine) as session:
                state = session.get(WatchState, lock.STATE)
                holder = state.lock_until.isoformat() if state is not None and state.lock_until else "?"
            report.outcome, report.reason = "busy", f"another pass holds the lock (until {holder})"
            log.info("watch.busy", reason=report.reason)
            return report

        def alive() -> None:
            if not dry_run:
                lock.heartbeat(engine, owner, settings.watch_lock_s)

        client = self.client_factory(alive)
        try:
            self._run(client, report, owner, bootstrap=bootstrap, since=since, dry_run=dry_run)
        except (RegistryError, lock.LockLost) as exc:
            reason = exc.reason if isinstance(exc, RegistryError) else str(exc)
            report.outcome, report.reason = "failed", reason
        except Exception as exc:
            report.outcome, report.reason = "failed", f"{type(exc).__name__}: {exc}"[:500]
            self._ended(report, client, clock, dry_run)
            raise
        finally:
            client.close()
            if not dry_run:
                lock.release(engine, owner)
        self._ended(report, client, clock, dry_run)
        return report

    def _ended(self, report: PassReport, client: RegistryClient, clock: float, dry_run: bool) -> None:
        report.requests, report.retries = client.requests, client.retried
        report.finished_at, report.seconds = utcnow().isoformat(), round(time.perf_counter() - clock, 3)
        if not dry_run:
            with transaction(self.runtime.engine) as session:
                state = _state(session)
                if report.outcome == "failed":
                    state.last_error, state.last_error_at = report.reason, utcnow()
                state.last_pass = report.as_dict()
        event = "watch.failed" if report.outcome == "failed" else "watch.pass"
        (log.warning if report.outcome == "failed" else log.info)(event, **report.as_dict())

    def _run(
        self,
        client: RegistryClient,
        report: PassReport,
        owner: str,
        *,
        bootstrap: bool,
        since: date | None,
        dry_run: bool,
    ) -> None:
        engine, settings = self.runtime.engine, self.runtime.settings
        version = client.version()
        report.data_timestamp = version.data_timestamp
        with transaction(engine) as session:
            state = _state(session)
            resuming = state.pass_started_at is not None and not bootstrap and since is None
            if resuming:
                window, bootstrap = state.pass_window, state.pass_bootstrap
                # A page token belongs to one state of the data: after a refresh, walk the window again.
                same_data = state.pass_data_timestamp == version.data_timestamp
                token = state.pass_page_token if same_data else None
                offset = state.pass_page_offset if same_data else 0
                counts, max_seen = dict(state.pass_counts or {}), state.pass_max_seen
            else:
                if since is None and not bootstrap and state.cursor is None:
                    bootstrap = True  # first pass ever: learn the registry, tell nobody
                if not bootstrap and since is None and version.data_timestamp == state.data_timestamp:
                    report.outcome = "up_to_date"
                    report.reason = f"registry data unchanged since the last pass ({version.data_timestamp})"
                    report.cursor = state.cursor.isoformat() if state.cursor else None
                    return
                window = None if bootstrap else (since or state.cursor)
                token, offset, counts, max_seen = None, 0, {}, None
                if not dry_run:
                    state.pass_window, state.pass_bootstrap = window, bootstrap
                    state.pass_data_timestamp, state.pass_page_token = version.data_timestamp, None
                    state.pass_page_offset = 0
                    state.pass_started_at, state.pass_max_seen, state.pass_counts = utcnow(), None, {}
        report.bootstrap, report.resumed = bootstrap, resuming
        report.window = window.isoformat() if window else None
        seen_at = _seen_at(version.data_timestamp)
        limit = settings.watch_bootstrap_records if bootstrap else 0
        # Only a limited bootstrap needs an order (keep the most recently active trials); unsorted pages are
        # the registry's cheapest.
        sort = BOOTSTRAP_SORT if limit else None

        def fetch(page_token: str | None) -> Page:
            return client.studies_page(
                since=window,
                page_token=page_token,
                page_size=settings.watch_page_size,
                sort=sort,
                count_total=not page_token,
            )

        # The next page is asked for while this one is applied: the registry serves it (and it travels)
        # meanwhile, instead of the pass waiting for it after every page. Still one request at a time (the
        # client paces them), and a page is applied only after every chunk before it committed.
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watch-next-page")
        pending: Future[Page] | None = None
        retried_token = False
        try:
            while True:
                try:
                    page = pending.result() if pending is not None else fetch(token)
                except TokenRefused:
                    if retried_token:
                        raise
                    # Expired token of a resumed pass: walk the window from its start (re-reads are absorbed).
                    retried_token, token, offset, pending = True, None, 0, None
                    continue
                pending = None
                report.pages += 1
                if page.next_token and not (limit and counts.get("read", 0) + len(page.studies) >= limit):
                    pending = ahead.submit(fetch, page.next_token)
                # The page in chunks, each committed with where the next one starts (this page's token and an
                # offset into it, or the next page's token): a transaction (and its row locks, or SQLite's
                # write lock) lasts a chunk, however large the page.
                studies, step = page.studies, max(1, settings.watch_commit_every)
                starts = range(min(offset, len(studies)), len(studies), step) if studies else range(0, 1)
                for start in starts:
                    end = min(start + step, len(studies))
                    if limit:  # a limited bootstrap stops at exactly its limit
                        end = min(end, start + max(0, limit - counts.get("read", 0)))
                    last = end >= len(studies)
                    work = self._apply(
                        studies[start:end],
                        owner,
                        window=window,
                        bootstrap=bootstrap,
                        seen_at=seen_at,
                        resume_at=(page.next_token, 0) if last else (token, end),
                        dry_run=dry_run,
                    )
                    counts = report.counts = _merge(counts, work.counts)  # so far, even if the pass fails later
                    if work.max_seen is not None and (max_seen is None or work.max_seen > max_seen):
                        max_seen = work.max_seen
                    for event, outcome in work.accepted:
                        # A no-op's catch-ups (its page taught a phrase more meaning) are queued as well.
                        if outcome.status != "no_op" or outcome.caught_up:
                            pipeline.after_commit(self.runtime, event, outcome, self.enqueue)
                    log.info(
                        "watch.chunk",
                        page=report.pages,
                        records=f"{start}-{end}",
                        **{k.replace(":", "_"): v for k, v in work.counts.items()},
                    )
                    if limit and counts.get("read", 0) >= limit:
                        break
                token, offset = page.next_token, 0
                if not token or (limit and counts.get("read", 0) >= limit):
                    break
        finally:
            # A pass that failed or stopped leaves at most one request under way; its answer is not needed.
            ahead.shutdown(wait=False, cancel_futures=True)
        report.counts = counts
        # Bootstrap read the registry as of its data timestamp; otherwise re-read the last day seen next time.
        cursor: date | None = datetime.fromisoformat(seen_at).date()
        if not bootstrap:
            cursor = max((d for d in (window, max_seen) if d is not None), default=None)
        report.cursor = cursor.isoformat() if cursor else None
        if dry_run:
            return
        with transaction(engine) as session:
            lock.renew(session, owner, settings.watch_lock_s)
            state = _state(session)
            state.cursor, state.data_timestamp = cursor, version.data_timestamp
            state.pass_window, state.pass_bootstrap, state.pass_data_timestamp = None, False, None
            state.pass_page_token, state.pass_started_at, state.pass_max_seen, state.pass_counts = None, None, None, {}
            state.pass_page_offset = 0
            state.last_success_at = utcnow()

    def _apply(
        self,
        studies: list[Any],
        owner: str,
        *,
        window: date | None,
        bootstrap: bool,
        seen_at: str,
        resume_at: tuple[str | None, int],
        dry_run: bool,
    ) -> PageWork:
        """Apply records with the pass's place and figures in one transaction (retried on a lost race)."""
        settings = self.runtime.settings
        for attempt in range(3):
            try:
                with session_factory(self.runtime.engine)() as session, session.begin():
                    _fast_json(session)
                    if not dry_run:
                        lock.renew(session, owner, settings.watch_lock_s)
                    work = apply_page(
                        session, studies, self.runtime, window=window, bootstrap=bootstrap, seen_at=seen_at
                    )
                    if dry_run:
                        raise _DryRun(work)  # rolls the page back
                    state = _state(session)
                    state.pass_page_token, state.pass_page_offset = resume_at
                    state.pass_counts = _merge(state.pass_counts or {}, work.counts)
                    if work.max_seen is not None and (
                        state.pass_max_seen is None or work.max_seen > state.pass_max_seen
                    ):
                        state.pass_max_seen = work.max_seen
                return work
            except _DryRun as dry:
                return dry.work
            except IntegrityError:
                # Another producer stored the same trial or event at the same moment: the page again finds it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def run_pass(
    runtime: Runtime,
    enqueue: pipeline.Enqueue,
    *,
    bootstrap: bool = False,
    since: date | None = None,
    dry_run: bool = False,
    client_factory: Callable[[Callable[[], None] | None], RegistryClient] | None = None,
) -> PassReport:
    """One pass (see the module docstring); what the CLI, the beat task, the demo and the benchmark call."""
    return Watcher(runtime, enqueue, client_factory).run(bootstrap=bootstrap, since=since, dry_run=dry_run)
