"""One watcher pass: from the registry's ``/version`` and ``/studies`` pages to events through the intake.

A pass, in order:

1. take the watcher's lock (``alerts.watch.lock``) - a pass already running means this one does nothing;
2. ``GET /version``: when ``dataTimestamp`` is the one the last finished pass read, stop (nothing new);
3. walk ``GET /studies`` with ``filter.advanced=AREA[LastUpdatePostDate]RANGE[<cursor>,MAX]`` page by page.
   Each page is applied in chunks of ``ALERTS_WATCH_COMMIT_EVERY`` records, each chunk in ONE transaction
   with the running figures (``alerts.watch.chunks``), then its events are queued for sending
   (``pipeline.after_commit``): memory stays a few pages whatever the total. In this process, a chunk
   also commits where the pass goes on (a page token and an offset into that page). With lanes
   (``ALERTS_WATCH_LANES`` > 1, PostgreSQL; ``alerts.watch.lanes``), processes apply chunks side by side
   and the pass moves its place past a page once all its chunks committed. Either way a pass killed
   anywhere resumes before the first record not committed, and skips what it committed by its marks;
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
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import structlog

from alerts import pipeline
from alerts.ctgov.client import Page, RegistryClient, RegistryError, TokenRefused
from alerts.db import transaction
from alerts.models import WatchState, utcnow
from alerts.runtime import Runtime
from alerts.watch import collector, lock
from alerts.watch.chunks import PageWork, apply_chunk, later, merge, queue_accepted, state
from alerts.watch.lanes import Done, Job, Lanes
from alerts.watch.records import first_posted

log = structlog.get_logger("alerts.watch")

BOOTSTRAP_SORT = "LastUpdatePostDate:desc"  # a limited bootstrap keeps the most recently active trials
# Pages read and not all committed yet, with lanes. A page's records are held until a lane takes them, so
# this bounds the pass's memory; it also lets the lanes go on while a page's new trials take their turns.
_PAGES_IN_HAND = 6


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


@dataclass(frozen=True)
class _Place:
    """What every chunk of a pass shares."""

    window: date | None
    seen_at: str
    mark: datetime
    owner: str
    step: int


def _pages(
    fetch: Callable[[str | None], Page], token: str | None, offset: int, wanted: Callable[[Page], bool]
) -> Generator[tuple[Page, str | None, int]]:
    """The pass's pages in order, as (page, the token that asked for it, the offset to start at).

    The next page is asked for while the caller applies this one: the registry serves it (and it travels)
    meanwhile, instead of the pass waiting for it after every page. Still one request at a time (the
    client paces them). Closing the iterator abandons the request under way: its answer is not needed.
    """
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
            if page.next_token and wanted(page):
                pending = ahead.submit(fetch, page.next_token)
            yield page, token, offset
            token, offset = page.next_token, 0
            if not token:
                return
    finally:
        ahead.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Part:
    """A chunk for a lane: its page, its records' places in the page, and whether it holds new trials."""

    page: int
    span: str
    fresh: bool
    studies: list[Any]


def _parts(page: int, studies: Sequence[Any], window: date | None, step: int, offset: int) -> Iterator[_Part]:
    """A page's records (from ``offset``) as lanes' chunks of at most ``step``.

    Records first posted inside the window (new trials: matched by what the vocabulary means, so their
    chunks take turns on it) go in chunks of their own; the rest (changes to trials we know) in others,
    which lanes apply side by side. Each group keeps the page's order.
    """
    fresh: list[tuple[int, Any]] = []
    known: list[tuple[int, Any]] = []
    for i, study in enumerate(studies, start=offset):
        posted = first_posted(study)
        (fresh if window is not None and posted is not None and posted >= window else known).append((i, study))
    for group, is_fresh in ((fresh, True), (known, False)):
        for start in range(0, len(group), step):
            part = group[start : start + step]
            yield _Part(page, f"{part[0][0]}-{part[-1][0] + 1}", is_fresh, [study for _, study in part])


def _logged(page: int, records: str, work: PageWork) -> None:
    log.info("watch.chunk", page=page, records=records, **{k.replace(":", "_"): v for k, v in work.counts.items()})


class Watcher:
    """Runs passes for one runtime; the client is built per pass unless one is handed in (tests)."""

    def __init__(
        self,
        runtime: Runtime,
        enqueue: pipeline.Enqueue,
        client_factory: Callable[[Callable[[], None] | None], RegistryClient] | None = None,
        *,
        lanes: int = 1,
        lane_enqueue: Callable[[Runtime], pipeline.Enqueue] | None = None,
    ) -> None:
        self.runtime = runtime
        self.enqueue = enqueue
        self.client_factory = client_factory or self._client
        # Lanes (alerts.watch.lanes) need PostgreSQL and a queue each lane can build for itself.
        self.lanes = lanes if lane_enqueue is not None and runtime.engine.dialect.name == "postgresql" else 1
        self.lane_enqueue = lane_enqueue

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
        # Lanes start (a fork server importing what they need: about a second and a half) while the registry
        # answers /version and the first page. A pass that turns out not to need them closes them unused.
        starting: Future[Lanes] | None = None
        if self.lanes > 1 and self.lane_enqueue is not None and not (bootstrap or dry_run):
            starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watch-lanes")
            starting = starter.submit(Lanes, settings, self.lanes, self.lane_enqueue)
            starter.shutdown(wait=False)
        try:
            with collector.relaxed():
                self._run(client, report, owner, bootstrap=bootstrap, since=since, dry_run=dry_run, lanes=starting)
        except (RegistryError, lock.LockLost) as exc:
            reason = exc.reason if isinstance(exc, RegistryError) else str(exc)
            report.outcome, report.reason = "failed", reason
        except Exception as exc:
            report.outcome, report.reason = "failed", f"{type(exc).__name__}: {exc}"[:500]
            self._ended(report, client, clock, dry_run)
            raise
        finally:
            client.close()
            if starting is not None:
                failed = starting.exception()  # lanes that could not start failed the pass if it needed them
                if failed is None:
                    starting.result().close()
                else:
                    log.warning("watch.lanes_failed", error=f"{type(failed).__name__}: {failed}"[:500])
            if not dry_run:
                lock.release(engine, owner)
        self._ended(report, client, clock, dry_run)
        return report

    def _ended(self, report: PassReport, client: RegistryClient, clock: float, dry_run: bool) -> None:
        report.requests, report.retries = client.requests, client.retried
        report.finished_at, report.seconds = utcnow().isoformat(), round(time.perf_counter() - clock, 3)
        if not dry_run:
            with transaction(self.runtime.engine) as session:
                current = state(session)
                if report.outcome == "failed":
                    current.last_error, current.last_error_at = report.reason, utcnow()
                current.last_pass = report.as_dict()
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
        lanes: Future[Lanes] | None = None,
    ) -> None:
        engine, settings = self.runtime.engine, self.runtime.settings
        version = client.version()
        report.data_timestamp = version.data_timestamp
        with transaction(engine) as session:
            current = state(session)
            resuming = current.pass_started_at is not None and not bootstrap and since is None
            if resuming:
                window, bootstrap = current.pass_window, current.pass_bootstrap
                # A page token belongs to one state of the data: after a refresh, walk the window again.
                same_data = current.pass_data_timestamp == version.data_timestamp
                token = current.pass_page_token if same_data else None
                offset = current.pass_page_offset if same_data else 0
                counts, max_seen = dict(current.pass_counts or {}), current.pass_max_seen
                mark = current.pass_started_at or utcnow()
            else:
                if since is None and not bootstrap and current.cursor is None:
                    bootstrap = True  # first pass ever: learn the registry, tell nobody
                if not bootstrap and since is None and version.data_timestamp == current.data_timestamp:
                    report.outcome = "up_to_date"
                    report.reason = f"registry data unchanged since the last pass ({version.data_timestamp})"
                    report.cursor = current.cursor.isoformat() if current.cursor else None
                    return
                window = None if bootstrap else (since or current.cursor)
                token, offset, counts, max_seen = None, 0, {}, None
                # The pass's mark: every record it commits carries it (done markers, alerts.watch.chunks).
                mark = utcnow()
                if not dry_run:
                    current.pass_window, current.pass_bootstrap = window, bootstrap
                    current.pass_data_timestamp, current.pass_page_token = version.data_timestamp, None
                    current.pass_page_offset = 0
                    current.pass_started_at, current.pass_max_seen, current.pass_counts = mark, None, {}
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

        def wanted(page: Page) -> bool:
            """Is the page after this one needed? (A limited bootstrap may stop within this one.)"""
            return not (limit and counts.get("read", 0) + len(page.studies) >= limit)

        pages = _pages(fetch, token, offset, wanted)
        place = _Place(window=window, seen_at=seen_at, mark=mark, owner=owner, step=max(1, settings.watch_commit_every))
        try:
            if lanes is not None and not bootstrap:
                counts, max_seen = self._in_lanes(lanes.result(), pages, place, report, counts, max_seen)
            else:
                for page, token, offset in pages:
                    report.pages += 1
                    counts, max_seen = self._in_process(
                        page, token, offset, place, report, counts, max_seen, limit, bootstrap, dry_run
                    )
                    if limit and counts.get("read", 0) >= limit:
                        break
        finally:
            pages.close()
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
            current = state(session)
            current.cursor, current.data_timestamp = cursor, version.data_timestamp
            current.pass_window, current.pass_bootstrap, current.pass_data_timestamp = None, False, None
            current.pass_page_token, current.pass_started_at = None, None
            current.pass_max_seen, current.pass_counts = None, {}
            current.pass_page_offset = 0
            current.last_success_at = utcnow()

    def _in_process(
        self,
        page: Page,
        token: str | None,
        offset: int,
        place: _Place,
        report: PassReport,
        counts: dict[str, int],
        max_seen: date | None,
        limit: int,
        bootstrap: bool,
        dry_run: bool,
    ) -> tuple[dict[str, int], date | None]:
        """A page in chunks, one after the other in this process, each committed with where the next one
        starts (this page's token and an offset into it, or the next page's token): a transaction (and its
        row locks, or SQLite's write lock) lasts a chunk, however large the page."""
        studies = page.studies
        starts = range(min(offset, len(studies)), len(studies), place.step) if studies else range(0, 1)
        for start in starts:
            end = min(start + place.step, len(studies))
            if limit:  # a limited bootstrap stops at exactly its limit
                end = min(end, start + max(0, limit - counts.get("read", 0)))
            last = end >= len(studies)
            work = apply_chunk(
                self.runtime,
                studies[start:end],
                place.owner,
                window=place.window,
                bootstrap=bootstrap,
                seen_at=place.seen_at,
                pass_mark=place.mark,
                resume_at=(page.next_token, 0) if last else (token, end),
                dry_run=dry_run,
            )
            counts = report.counts = merge(counts, work.counts)  # so far, even if the pass fails later
            max_seen = later(max_seen, work.max_seen)
            queue_accepted(self.runtime, self.enqueue, work)
            _logged(report.pages, f"{start}-{end}", work)
            if limit and counts.get("read", 0) >= limit:
                break
        return counts, max_seen

    def _in_lanes(
        self,
        lanes: Lanes,
        pages: Iterator[tuple[Page, str | None, int]],
        place: _Place,
        report: PassReport,
        counts: dict[str, int],
        max_seen: date | None,
    ) -> tuple[dict[str, int], date | None]:
        """Every page's chunks handed to the next free lane; the pass's place moves past a page once all its
        chunks committed (pages are settled in order).

        At most one chunk of new trials runs at a time: such chunks take turns on the vocabulary anyway
        (``vocabulary.serialize_learning``), and a second one would only hold a lane waiting. The other
        lanes take the changes to known trials. At most ``_PAGES_IN_HAND`` pages are held: memory stays
        flat whatever the total, and the next page is read while the lanes work.
        """
        engine, settings = self.runtime.engine, self.runtime.settings
        fresh: deque[_Part] = deque()
        known: deque[_Part] = deque()
        running: dict[Future[Done], tuple[int, str, bool]] = {}  # page, span, fresh: the records went to a lane
        left: dict[int, int] = {}  # page number -> its chunks not committed yet, in page order
        next_tokens: dict[int, str | None] = {}
        more = True

        def fresh_running() -> bool:
            return any(is_fresh for _, _, is_fresh in running.values())

        def ready() -> int:
            return len(known) + (1 if fresh and not fresh_running() else 0)

        try:
            while True:
                while more and len(left) < _PAGES_IN_HAND and len(running) + ready() < self.lanes:
                    got = next(pages, None)
                    if got is None:
                        more = False
                        break
                    page, _token, offset = got
                    report.pages += 1
                    parts = list(_parts(report.pages, page.studies[offset:], place.window, place.step, offset))
                    for part in parts:
                        (fresh if part.fresh else known).append(part)
                    left[report.pages], next_tokens[report.pages] = len(parts), page.next_token
                # Pages whose every chunk committed, in order: the pass goes on after them if killed now.
                while left and left[next(iter(left))] == 0:
                    number = next(iter(left))
                    del left[number]
                    token = next_tokens.pop(number)
                    if token is not None:
                        with transaction(engine) as session:
                            lock.renew(session, place.owner, settings.watch_lock_s)
                            current = state(session)
                            current.pass_page_token, current.pass_page_offset = token, 0
                while len(running) < self.lanes and ready():
                    part = fresh.popleft() if fresh and not fresh_running() else known.popleft()
                    job = Job(part.studies, place.owner, place.window, place.seen_at, place.mark)
                    running[lanes.submit(job)] = (part.page, part.span, part.fresh)
                if not running:
                    if not more and not left:
                        break
                    continue
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    number, span, _ = running.pop(future)
                    done = future.result()  # a lane's failure fails the pass here, its place kept
                    counts = report.counts = merge(counts, done.counts)
                    max_seen = later(max_seen, done.max_seen)
                    left[number] -= 1
                    _logged(number, span, PageWork(counts=done.counts))
        finally:
            lanes.close()
        return counts, max_seen


def run_pass(
    runtime: Runtime,
    enqueue: pipeline.Enqueue,
    *,
    bootstrap: bool = False,
    since: date | None = None,
    dry_run: bool = False,
    client_factory: Callable[[Callable[[], None] | None], RegistryClient] | None = None,
    lanes: int = 1,
    lane_enqueue: Callable[[Runtime], pipeline.Enqueue] | None = None,
) -> PassReport:
    """One pass (see the module docstring); what the CLI, the beat task, the demo and the benchmark call.

    With ``lanes`` > 1 and ``lane_enqueue`` (PostgreSQL), a pass's chunks are applied by that many processes
    side by side (``alerts.watch.lanes``); a bootstrap and a dry run stay in this process.
    """
    watcher = Watcher(runtime, enqueue, client_factory, lanes=lanes, lane_enqueue=lane_enqueue)
    return watcher.run(bootstrap=bootstrap, since=since, dry_run=dry_run)
