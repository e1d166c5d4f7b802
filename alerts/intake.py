"""Accepting an event: deduplicate, diff, store the trial version, learn, create deliveries — one transaction.

Everything here happens in the caller's transaction, so an event is either fully applied (event row,
snapshot, vocabulary counts, deliveries, renderings) or not at all. Sending is queued by the caller after
the commit. An audience larger than ``first_chunk`` subscribers is the exception: the first chunk's rows
are created here and the event is left ``fanning_out`` for ``alerts.fanout`` to create the rest chunk
by chunk, so that sending starts early.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from alerts import catchup, contents, ctgov, emails, places, vocabulary
from alerts.catchup import CaughtUp, RenderFor
from alerts.conditions import condition_keys
from alerts.digests import held
from alerts.events import NEW_TRIAL_FOR_CONDITION, TRIAL_CHANGED, TrialEvent
from alerts.matching import Chunk, MatchPlan, NearFacts, TrialFacts, create_deliveries_chunk, create_held_items
from alerts.models import Event, EventStatus, SubscriptionKind, Trial, utcnow
from alerts.rendering import Content, Renderer


@dataclass(frozen=True)
class Accepted:
    event_id: int
    status: str  # fanned_out | no_op | duplicate
    recipients: int
    reason: str | None = None
    # Seconds spent per stage (match = reading and deciding, rows = the INSERT ... SELECT, render).
    timings: dict[str, float] = field(default_factory=dict)
    # Renders one more variant of the email, for the later chunks of a fan-out (alerts.fanout).
    render: Callable[[str | None], Content] | None = field(default=None, repr=False, compare=False)
    # Earlier new-trial events that reached more followers because a phrase's meaning grew
    # (alerts.catchup): their new deliveries are to be queued after commit too.
    caught_up: tuple[CaughtUp, ...] = ()
    # Items held for digest subscribers instead of emails (alerts.digests).
    held: int = 0
    # The ids of the deliveries created with the event, (after, upto]: its first chunk's (alerts.matching.Chunk).
    rows: tuple[int, int] = (0, 0)


@dataclass
class Prefetched:
    """What a caller accepting many events in one transaction (the registry watcher, a page at a time)
    already read for all of them, one query each, so that each event does not ask again.

    Put in ``session.info[PREFETCHED]``. Outcomes are those of accepting each event alone: the snapshots
    are locked (FOR UPDATE) by the caller in the same transaction, a key read as absent that another
    producer inserts meanwhile still hits the unique constraint at flush, and ``trial_audience`` only skips
    a matching INSERT that would insert nothing (holding asks its own index: ``create_held_items``).
    """

    snapshots: dict[str, Trial | None] = field(default_factory=dict)  # NCT ID -> locked snapshot (or none)
    absent_keys: set[str] = field(default_factory=set)  # idempotency keys not in the events table
    trial_audience: set[str] | None = None  # NCT IDs with an active trial subscription; None: unknown
    # Ids taken from the events' sequence for this batch (``reserve_event_ids``): an event row nothing
    # reads at once (a no-op, a change nobody follows) then goes out with the batch's next flush, in one
    # statement with the others, instead of an INSERT ... RETURNING round trip of its own.
    event_ids: list[int] = field(default_factory=list)
    # Filled by ``learn_ahead``: what each event's trial teaches (by idempotency key), and the concepts
    # phrases gained from the whole batch, for the next accepted event to catch their followers up on.
    learned: dict[str, vocabulary.Learned] = field(default_factory=dict)
    gained: dict[str, frozenset[str]] = field(default_factory=dict)


PREFETCHED = "alerts.intake.prefetched"
NO_ONE = Chunk(created=0, last_subscriber_id=0, after_id=0, upto_id=0, complete=True)


def reserve_event_ids(session: Session, count: int) -> list[int]:
    """``count`` ids for new event rows, in one query; none where ids are not from a sequence (SQLite)."""
    if count <= 0 or session.get_bind().dialect.name != "postgresql":
        return []
    taken = session.execute(
        text("SELECT nextval(pg_get_serial_sequence('events', 'id')) FROM generate_series(1, :n)"), {"n": count}
    )
    return sorted(int(n) for n in taken.scalars())


def learn_ahead(session: Session, events: Sequence[TrialEvent]) -> None:
    """Learn the vocabulary of a batch of events at once, before accepting them one by one (the registry
    watcher's page; ``session.info[PREFETCHED]`` holds the batch's snapshots).

    The same counts as ``accept`` / ``store_baseline`` learning each one (only versions newer than the
    stored snapshot teach), in one set-based pass (``vocabulary.learn_many``) instead of a dozen round
    trips per new trial; each accepted event then finds its trial learned. Every event of the batch
    matches with what the whole batch taught, and the followers of phrases whose meaning grew are caught
    up by the batch's next accepted event (``Prefetched.gained``): what learning one by one would have
    reached through catch-ups.
    """
    pre = _prefetched(session)
    if pre is None:
        return
    versions: dict[str, vocabulary.Learned] = {}
    for event in events:
        if event.nct_id not in pre.snapshots or not _is_newest(pre.snapshots[event.nct_id], event):
            continue
        learned = vocabulary.extract(event.trial)
        pre.learned[event.idempotency_key] = learned
        versions.pop(event.nct_id, None)  # the last version of a trial is the one it ends with
        versions[event.nct_id] = learned
    for change in vocabulary.learn_many(session, versions):
        if change.gained:
            pre.gained[change.key] = pre.gained.get(change.key, frozenset()) | change.gained


def _learned(session: Session, event: TrialEvent) -> tuple[vocabulary.Learned, bool]:
    """What the event's trial teaches, and whether the caller's batch learned it already (``learn_ahead``):
    learning it again would change nothing, at the cost of reading the trial's vocabulary row back."""
    pre = _prefetched(session)
    found = pre.learned.pop(event.idempotency_key, None) if pre is not None else None
    return (found, True) if found is not None else (vocabulary.extract(event.trial), False)


def _prefetched(session: Session) -> Prefetched | None:
    found = session.info.get(PREFETCHED)
    return found if isinstance(found, Prefetched) else None


def _snapshot(session: Session, nct_id: str) -> Trial | None:
    """The trial's stored version, locked for this transaction."""
    pre = _prefetched(session)
    if pre is not None and nct_id in pre.snapshots:
        return pre.snapshots.pop(nct_id)  # once: a second event of the same trial reads it again
    return session.get(Trial, nct_id, with_for_update=True)


def _is_newest(snapshot: Trial | None, event: TrialEvent) -> bool:
    return snapshot is None or snapshot.version_at <= event.occurred_at


def _store_version(session: Session, snapshot: Trial | None, event: TrialEvent, fingerprint: str | None = None) -> None:
    """Remember the newest version seen; an event older than the stored one never overwrites it."""
    record = dict(event.trial)
    if snapshot is None or snapshot.version_at <= event.occurred_at:
        places.store_sites(session, event.nct_id, record, snapshot.record if snapshot is not None else None)
    if snapshot is None:
        session.add(
            Trial(
                nct_id=event.nct_id,
                title=ctgov.title(record),
                record=record,
                fingerprint=fingerprint or ctgov.fingerprint(record),
                version_at=event.occurred_at,
            )
        )
    elif snapshot.version_at <= event.occurred_at:
        snapshot.record = record
        snapshot.title = ctgov.title(record)
        snapshot.fingerprint = fingerprint or ctgov.fingerprint(record)
        snapshot.version_at = event.occurred_at


def _changed(event: TrialEvent, snapshot: Trial | None) -> tuple[Mapping[str, Any] | None, str | None]:
    """The version to diff against, or why there is nothing to compare."""
    if event.previous is not None:
        return event.previous, None
    if snapshot is None:
        return None, f"first version of {event.nct_id} seen; stored as the baseline for later changes"
    if snapshot.version_at > event.occurred_at:
        return None, "older than the version already stored; nothing newer to report"
    return snapshot.record, None


def store_baseline(session: Session, event: TrialEvent) -> None:
    """Store ``event.trial`` as its trial's version and learn its vocabulary, telling nobody.

    For the registry watcher's bootstrap and for trials it meets long after they were posted: the same
    snapshot and vocabulary a first-seen ``trial.changed`` would leave, without an event or deliveries.
    """
    snapshot = _snapshot(session, event.nct_id)
    learned, ahead = _learned(session, event)
    if _is_newest(snapshot, event) and not ahead:
        vocabulary.learn(session, event.nct_id, learned)
    _store_version(session, snapshot, event)


def _render_earlier(session: Session, renderer: Renderer, site: Mapping[str, Any]) -> RenderFor:
    """How to render an earlier new-trial event again: from the stored version of its trial."""

    def render_for(earlier: Event) -> Callable[[str | None], Content]:
        snapshot = session.get(Trial, earlier.nct_id)
        record: Mapping[str, Any] = snapshot.record if snapshot is not None else {}
        condition = earlier.condition or ""
        shared = {**site, **emails.new_trial(record, condition)}
        return _variant_renderer(renderer, emails.NEW_TRIAL, record, earlier.condition, shared)

    return render_for


def _variant_renderer(
    renderer: Renderer, template: str, record: Mapping[str, Any], condition: str | None, shared: Mapping[str, Any]
) -> Callable[[str | None], Content]:
    """How each variant of an event's email is rendered: a followed label (the whole email, Jinja2 + premailer
    once for all its recipients), or a nearby-site outcome (its small fragments only; alerts.contents)."""

    def render(variant: str | None) -> Content:
        if variant is not None and variant.startswith(places.OUTCOME_SEPARATOR):
            _, outcome = places.split_variant(variant)
            return contents.pack(
                emails.near_fragments(renderer, record, outcome, shared),
                emails.near_subject(record, outcome, shared),
            )
        extra = emails.followed(variant, condition or variant) if variant is not None else {}
        return renderer.render(template, dict(shared) | extra)

    return render


def accept(
    session: Session,
    event: TrialEvent,
    renderer: Renderer,
    site: Mapping[str, Any],
    first_chunk: int = 2000,
    *,
    catch_up_days: int = 30,
) -> Accepted:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    pre = _prefetched(session)
    if pre is None or event.idempotency_key not in pre.absent_keys:
        existing = session.scalar(select(Event).where(Event.idempotency_key == event.idempotency_key))
        if existing is not None:
            return Accepted(existing.id, "duplicate", 0, "already received")
    else:
        pre.absent_keys.discard(event.idempotency_key)  # present from now on

    snapshot = _snapshot(session, event.nct_id)
    row = Event(
        idempotency_key=event.idempotency_key,
        type=event.type,
        nct_id=event.nct_id,
        condition=event.condition,
        occurred_at=event.occurred_at,
        status=EventStatus.NO_OP,
        changes=[],
        recipients=0,
    )
    if pre is not None and pre.event_ids:
        row.id = pre.event_ids.pop(0)
    learned, ahead = _learned(session, event)
    caught_up: list[CaughtUp] = []
    gained: dict[str, frozenset[str]] = {}
    if _is_newest(snapshot, event) and not ahead:
        # What NLM's indexing of this version teaches about condition phrases: every subscription following
        # a phrase whose meaning changed follows the new meaning in the matching below, and catches up on
        # the recent new trials it missed while the phrase meant less. (Not when the caller learned its
        # batch ahead: its catch-ups come with pre.gained below.)
        meanings = vocabulary.learn_changes(session, event.nct_id, learned)
        gained = {change.key: change.gained for change in meanings}
    if pre is not None and pre.gained:
        # What the caller's batch taught (learn_ahead): caught up once, by the batch's first accepted event.
        for key, concepts in pre.gained.items():
            gained[key] = gained.get(key, frozenset()) | concepts
        pre.gained = {}
    if gained:
        caught_up = catchup.catch_up(session, gained, _render_earlier(session, renderer, site), catch_up_days)
    template: str
    context: Callable[[], dict[str, Any]]  # built only when someone is listening
    broader: list[str] = []
    facts: TrialFacts | None = None
    new_fingerprint: str | None = None  # computed once: the dedupe key and the stored snapshot share it
    open_study = TrialFacts.recruiting_now(event.trial)
    near = NearFacts(event.nct_id, open=open_study)
    old: Mapping[str, Any] | None = None
    changes: list[ctgov.Change] = []
    if event.type == TRIAL_CHANGED:
        old, reason = _changed(event, snapshot)
        new_fingerprint = ctgov.fingerprint(event.trial)
        if old is not None and snapshot is not None and old is snapshot.record:
            old_fingerprint = snapshot.fingerprint  # stored with it: fingerprint(snapshot.record)
        else:
            old_fingerprint = ctgov.fingerprint(old) if old else ""
        # Fingerprints differ exactly when diff finds something (tests/test_ctgov.py holds them to it):
        # noise, the most common update, costs no diff.
        same = old is not None and old_fingerprint == new_fingerprint
        changes = ctgov.diff(old, event.trial) if old is not None and not same else []
        if old is not None and not changes:
            reason = "no material change (only noise such as derivedSection order or update dates)"
        row.changes = emails.changes_as_dicts(changes)
        kind, targets = SubscriptionKind.TRIAL, [event.nct_id]
        dedupe = f"changed:{event.nct_id}:{old_fingerprint}:{new_fingerprint}"
        if old is not None and changes:
            # What a follower with a place is told first: sites near them that opened, started or stopped.
            # (Without a material change nobody is told anything: not needed.)
            near = NearFacts(event.nct_id, open_study, **places.site_changes(old, event.trial))
        template, context = emails.TRIAL_CHANGED, lambda: emails.trial_changed(event.trial, changes)
    else:
        assert event.type == NEW_TRIAL_FOR_CONDITION and event.condition is not None
        reason = None
        kind = SubscriptionKind.CONDITION
        # A subscription follows a phrase: it matches the trial's own words, or a phrase whose meaning
        # includes a concept the trial is filed under (mesh: targets: subscriptions pinned before 0011).
        words = condition_keys([event.condition, *ctgov.conditions(event.trial)])
        targets = list(dict.fromkeys([*words, *vocabulary.phrases_meaning(session, learned.concepts)]))
        targets += learned.targets
        broader = vocabulary.phrases_meaning(session, learned.ancestors) + learned.broader_targets
        facts = TrialFacts.of(event.trial)
        # Keyed on the trial alone: one event per condition still reaches each subscriber once.
        dedupe = f"new:{event.nct_id}"
        condition = event.condition
        template, context = emails.NEW_TRIAL, lambda: emails.new_trial(event.trial, condition, learned)

    _store_version(session, snapshot, event, new_fingerprint)
    session.add(row)
    if kind == SubscriptionKind.TRIAL and pre is not None and pre.trial_audience is not None:
        listening = event.nct_id in pre.trial_audience
    else:
        listening = True
    if row.id is None or (reason is None and listening):
        # Only the event row (deliveries refer to it): the snapshot's UPDATE goes out with the transaction's
        # next flush, batched with those of the other events a caller accepts in the same transaction.
        session.flush([row])
    render: Callable[[str | None], Content] | None = None
    held_count = 0
    chunk = NO_ONE
    if reason is None:
        rows_started = time.perf_counter()
        if not _is_newest(snapshot, event):
            near = NearFacts(event.nct_id)  # the stored sites are a newer version's: name none
        plan = MatchPlan(kind, tuple(targets), tuple(broader), facts, dedupe, near)
        row.match = plan.as_json()
        # Nobody follows this trial (the caller asked once for its whole batch): the INSERT would add nothing.
        chunk = create_deliveries_chunk(session, row.id, plan, 0, first_chunk) if listening else NO_ONE
        row.recipients = chunk.created
        # Digest subscribers: the same match becomes held items, with the entry rendered once for all (an
        # event without a digest audience costs one probe of its index there).
        held_count = create_held_items(session, row.id, plan) if listening else 0
        if chunk.complete:
            row.status = EventStatus.FANNED_OUT
        else:
            row.status, row.fanout_cursor, row.fanout_at = EventStatus.FANNING_OUT, chunk.last_subscriber_id, utcnow()
        timings["rows_s"] = time.perf_counter() - rows_started
        if held_count:
            render_started = time.perf_counter()
            held.prepare(session, renderer, site, row.id, dedupe, event.trial, old, changes)
            timings["held_render_s"] = time.perf_counter() - render_started
        if row.recipients:
            shared = {**site, **context()}

            render = _variant_renderer(renderer, template, event.trial, event.condition, shared)
            # Rendered (and CSS-inlined) once per variant (followed label) for all its recipients;
            # skipped when nobody is listening.
            render_started = time.perf_counter()
            contents.render_variants(session, row, render, counts=chunk.variants, new_event=True)
            timings["render_s"] = time.perf_counter() - render_started
    else:
        row.reason = reason
    timings["match_s"] = time.perf_counter() - started - sum(timings.values())
    return Accepted(
        row.id,
        row.status,
        row.recipients,
        row.reason,
        timings,
        render,
        tuple(caught_up),
        held=held_count,
        rows=(chunk.after_id, chunk.upto_id),
    )
