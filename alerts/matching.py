"""Event -> subscriptions, in SQL. Deliveries are created set-based, never by looping over subscribers.

Which condition subscriptions a new trial reaches (``create_deliveries`` with kind=condition):

* A subscription to a plain condition key (a phrase the vocabulary did not know) matches when the key is
  the key of the event's condition or of one of the trial's listed conditions.
* A subscription to a MeSH concept (``mesh:D007405``, see ``alerts.vocabulary``) matches when the concept
  is one of the trial's MeSH concepts (``conditionBrowseModule.meshes``).
* **Include narrower terms** (``Subscription.include_narrower``, off by default): the concept subscription
  also matches when its concept is one of the trial's MeSH *ancestors*, i.e. when the trial is filed under
  a narrower concept. "Spinal Diseases" with it reaches a trial filed under "Intervertebral Disc
  Displacement" (whose ancestors include Spinal Diseases). The reverse never happens: a subscription to
  a narrow concept does not reach trials filed only under a broader one (a "Hernia" trial is not about
  discs), with or without the option.
* Then the subscription's filters, all of which must hold: ``recruiting_only`` - the trial is recruiting
  or not yet recruiting; countries - the trial lists a site in one of them; phases - the trial is in one
  of them. A trial listing no sites (or no phase) passes no country (or phase) filter.

All of it is WHERE clauses of one ``INSERT ... SELECT``: the event's facts are bound parameters, the
filters are EXISTS / NOT EXISTS over ``subscription_filters`` by primary key.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Executable,
    Float,
    Integer,
    Select,
    String,
    bindparam,
    case,
    exists,
    func,
    insert,
    join,
    literal,
    literal_column,
    null,
    or_,
    select,
)
from sqlalchemy.orm import Session, aliased

from alerts import ctgov, places
from alerts.conditions import condition_key
from alerts.db import xact_lock
from alerts.eligibility import Eligibility
from alerts.listparam import one_of
from alerts.models import (
    Delivery,
    DeliveryStatus,
    HeldItem,
    Subscriber,
    Subscription,
    SubscriptionFilter,
    SubscriptionKind,
    SubscriptionStatus,
    utcnow,
)

# Statuses that pass a "recruiting only" filter.
OPEN_STATUSES: Final = frozenset({"RECRUITING", "NOT_YET_RECRUITING"})
COUNTRY: Final = "country"
IMMEDIATELY: Final = "immediately"  # Subscription.frequency of an email per event (alerts.digests.preferences)
WEEKLY: Final = "weekly"
PHASE: Final = "phase"


def country_key(name: str) -> str:
    """Countries compare like conditions: "United States", "united states" and "UNITED  STATES" are one."""
    return condition_key(name)[:100]


@dataclass(frozen=True)
class TrialFacts:
    """What condition subscription filters look at, taken from the event's record."""

    recruiting: bool = False  # recruiting or not yet recruiting
    countries: tuple[str, ...] = ()  # country_key of every country with a site
    phases: tuple[str, ...] = ()  # phase codes ("PHASE2", "NA"...)
    # eligibilityModule: ages in years (None: no limit), sex ("FEMALE" / "MALE"; None: all).
    min_age: float | None = None
    max_age: float | None = None
    sex: str | None = None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> TrialFacts:
        countries = {country_key(loc.country) for loc in ctgov.locations(record) if loc.country}
        accepts = Eligibility.of(record)
        return cls(
            recruiting=cls.recruiting_now(record),
            countries=tuple(sorted(countries - {""})),
            phases=tuple(ctgov.phase_codes(record)),
            min_age=accepts.minimum.years if accepts.minimum is not None else None,
            max_age=accepts.maximum.years if accepts.maximum is not None else None,
            sex=accepts.sex,
        )

    @staticmethod
    def recruiting_now(record: Mapping[str, Any]) -> bool:
        """The trial's overall status is an open one (``recruiting`` alone: what a change's email needs,
        without reading every site, phase and age limit)."""
        status: Any = record
        for key in ("protocolSection", "statusModule", "overallStatus"):
            status = status.get(key) if isinstance(status, Mapping) else None
        code = "_".join(status.upper().split()) if isinstance(status, str) else None
        return code in OPEN_STATUSES

    def as_json(self) -> dict[str, Any]:
        return {
            "recruiting": self.recruiting,
            "countries": list(self.countries),
            "phases": list(self.phases),
            "min_age": self.min_age,
            "max_age": self.max_age,
            "sex": self.sex,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialFacts:
        return cls(
            bool(data["recruiting"]),
            tuple(data["countries"]),
            tuple(data["phases"]),
            data.get("min_age"),
            data.get("max_age"),
            data.get("sex"),
        )


@dataclass(frozen=True)
class NearFacts:
    """What a subscriber with a place is told about the trial's sites (alerts.places, alerts.emails).

    ``open``: the study is recruiting, so every placed subscriber's email names their nearest open site.
    ``added`` / ``started`` / ``stopped``: positions (in the new record's locations) of the sites a
    ``trial.changed`` added, that began recruiting and that stopped recruiting.
    """

    nct_id: str
    open: bool = False
    added: tuple[int, ...] = ()
    started: tuple[int, ...] = ()
    stopped: tuple[int, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "nct_id": self.nct_id,
            "open": self.open,
            "added": list(self.added),
            "started": list(self.started),
            "stopped": list(self.stopped),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NearFacts:
        return cls(
            str(data["nct_id"]),
            bool(data.get("open")),
            tuple(data.get("added") or ()),
            tuple(data.get("started") or ()),
            tuple(data.get("stopped") or ()),
        )


@dataclass(frozen=True)
class MatchPlan:
    """Everything create_deliveries needs for one event; stored on the event for replays."""

    kind: SubscriptionKind
    targets: tuple[str, ...]
    broader_targets: tuple[str, ...]
    facts: TrialFacts | None
    dedupe_key: str
    near: NearFacts | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "targets": list(self.targets),
            "broader_targets": list(self.broader_targets),
            "facts": None if self.facts is None else self.facts.as_json(),
            "dedupe_key": self.dedupe_key,
            "near": None if self.near is None else self.near.as_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MatchPlan:
        facts, near = data.get("facts"), data.get("near")
        return cls(
            kind=SubscriptionKind(data["kind"]),
            targets=tuple(data["targets"]),
            broader_targets=tuple(data.get("broader_targets") or ()),
            facts=None if facts is None else TrialFacts.from_json(facts),
            dedupe_key=str(data["dedupe_key"]),
            near=None if near is None else NearFacts.from_json(near),
        )


def _passes(kind: str, values: bool) -> ColumnElement[bool]:
    """No filter of this kind, or one of the trial's ``:<kind>s`` is accepted (probes by primary key)."""
    any_filter = aliased(SubscriptionFilter)
    unfiltered = ~exists().where(any_filter.subscription_id == Subscription.id, any_filter.kind == kind)
    if not values:
        return unfiltered
    accepted = aliased(SubscriptionFilter)
    return or_(
        unfiltered,
        exists().where(
            accepted.subscription_id == Subscription.id,
            accepted.kind == kind,
            one_of(accepted.value, f"{kind}_values"),
        ),
    )


def _reachable(sites: Any, eligibility: tuple[bool, bool, bool]) -> list[ColumnElement[bool]]:
    """A subscriber's place, distance, age and sex let the trial through (see the module docstring).

    Distance: no limit, or the nearest site (open site, if they asked) of the trial to their city is
    within it; a trial with no site coordinates has no nearest site, so only those without a limit get
    it. Age and sex: not given, or the trial's limits allow them (eligibility.Eligibility.accepts).
    """
    nearest = case((Subscriber.recruiting_sites_only.is_(True), sites.c.open_km), else_=sites.c.any_km)
    clauses = [or_(Subscriber.distance_km.is_(None), places.within(nearest, Subscriber.distance_km))]
    has_min, has_max, has_sex = eligibility
    if has_min:
        clauses.append(or_(Subscriber.age.is_(None), Subscriber.age + 1 > bindparam("min_age", type_=Float())))
    if has_max:
        clauses.append(or_(Subscriber.age.is_(None), Subscriber.age <= bindparam("max_age", type_=Float())))
    if has_sex:
        clauses.append(or_(Subscriber.sex.is_(None), Subscriber.sex == bindparam("trial_sex", type_=String())))
    return clauses


def _digest_audience(kind: SubscriptionKind) -> Select[tuple[int]]:
    """Subscribers with an active digest subscription to one of ``:targets``, from its partial index.

    Every subscriber who may get a held item has one (their own digest subscription matched); the
    ranking in ``_candidates`` still decides which of their subscriptions owns the news. The index's
    predicate is repeated as literals: a planner only uses a partial index when the query implies it.
    """
    digest = aliased(Subscription)
    return select(digest.subscriber_id).where(
        digest.kind == kind.value,
        one_of(digest.target, "targets"),
        digest.frequency != literal_column(f"'{IMMEDIATELY}'"),
        digest.status == literal_column(f"'{SubscriptionStatus.ACTIVE.value}'"),
    )


def _candidates(
    kind: SubscriptionKind,
    broader: bool,
    recruiting: bool,
    countries: bool,
    phases: bool,
    chunked: bool,
    confirmed_before: bool = False,
    eligibility: tuple[bool, bool, bool] = (False, False, False),
    near: tuple[bool, tuple[str, ...]] | None = None,
    plain_variant: bool = False,
) -> Any:
    """Active subscriptions the event matches, ranked per subscriber (the oldest owns the news).

    The one place filters are applied: immediate deliveries and digest held items both select from it.
    Subscribers this news already reached by email are left out. ``plain_variant``: the variant is the
    followed label alone (digest items are grouped by it), without the per-reader place outcome.

    Parameters: event_id, dedupe_key, now, targets (all), direct (targets that need no include_narrower),
    country_values, phase_values; chunked: after (subscriber id), upto and chunk (how many subscribers);
    confirmed_before: only subscriptions confirmed by then (catching up on an earlier event).
    eligibility (the trial has a minimum age, a maximum age, one sex): min_age, max_age, trial_sex;
    near (show the nearest open site, site change kinds): near_nct_id, <kind>_seqs.
    """
    where: list[ColumnElement[bool]] = [
        Subscription.kind == kind.value,
        one_of(Subscription.target, "targets"),
        Subscription.status == SubscriptionStatus.ACTIVE.value,
    ]
    if chunked:
        # Keyset over subscribers: all of one subscriber's subscriptions fall in the same chunk, so the
        # oldest-owns-the-delivery rank below stays right; the planner walks subscribers in order from
        # here and stops after the chunk (LIMIT), so each chunk costs its own size, not what is left.
        where.append(Subscription.subscriber_id > bindparam("after", type_=BigInteger()))
    if confirmed_before:
        where.append(Subscription.confirmed_at <= bindparam("confirmed_before", type_=Subscription.confirmed_at.type))
    if broader:
        where.append(or_(one_of(Subscription.target, "direct"), Subscription.include_narrower.is_(True)))
    if plain_variant:
        # Held items: only subscribers with a digest subscription among the targets can get one. Without
        # this, holding ranked every follower of the event (100,000 for a common condition) to find the
        # few with a digest, in the event's transaction, before its first email could go.
        where.append(Subscription.subscriber_id.in_(_digest_audience(kind)))
    condition = kind == SubscriptionKind.CONDITION
    show_open, changes = near if near is not None else (False, ())
    # The nearest sites of the trial to every chosen city, computed once per city (alerts.places).
    sites = places.nearest_sites(("any", "open", *changes)) if condition or near is not None else None
    if condition:
        if not recruiting:
            where.append(Subscription.recruiting_only.is_(False))
        where += [_passes(COUNTRY, countries), _passes(PHASE, phases)]
        where += _reachable(sites, eligibility)
    outcome = (
        places.outcome_sql(
            sites, Subscriber.city_id, Subscriber.distance_unit, Subscriber.distance_km, show_open, changes
        )
        if sites is not None
        else None
    )
    if plain_variant:
        outcome = None
    if condition:
        variant: Any = Subscription.label if outcome is None else Subscription.label + outcome
    else:
        variant = null() if outcome is None else func.nullif(outcome, "")
    source: Any = Subscription
    if chunked:
        # The chunk's keyset range, closed above (``create_deliveries_chunk``): with the subscribers joined
        # PostgreSQL hashes them and sorts for the window function instead of walking the index in
        # order and stopping at the LIMIT, so without an upper bound each chunk read every remaining
        # subscriber. Repeated on the joined subscribers: an inequality is not carried across a join.
        upto = bindparam("upto", type_=BigInteger())
        where.append(Subscription.subscriber_id <= upto)
        if sites is not None:
            where += [Subscriber.id > bindparam("after", type_=BigInteger()), Subscriber.id <= upto]
    if sites is not None:
        source = join(Subscription, Subscriber, Subscriber.id == Subscription.subscriber_id).outerjoin(
            sites, sites.c.city_id == Subscriber.city_id
        )
    already = aliased(Delivery)
    dedupe_key = bindparam("dedupe_key", type_=String())
    # Subscribers this news already reached, left out before ranking: probed by (dedupe_key, subscriber_id)
    # per candidate. (Tested on the ranked rows instead, PostgreSQL could pick an anti join that scans every
    # delivery of the news per candidate: quadratic over the chunks of a fan-out.)
    reached = [already.dedupe_key == dedupe_key, already.subscriber_id == Subscription.subscriber_id]
    if chunked:
        # The chunk's range again, on the deliveries: implied by the correlation, but the planner does not
        # carry it across. Without it, every chunk of a fan-out read and sorted all the deliveries its
        # earlier chunks created (a merge anti join, chosen on the new rows' stale statistics): 92,000 rows
        # for the last chunk of 100,000, quadratic over the chunks of a larger audience.
        reached += [already.subscriber_id > bindparam("after", type_=BigInteger()), already.subscriber_id <= upto]
    where.append(~exists().where(*reached))
    return (
        select(
            Subscription.subscriber_id,
            Subscription.id.label("subscription_id"),
            variant.label("variant"),
            # Several matching subscriptions: the oldest one owns the delivery (and its unsubscribe link),
            # and its frequency decides between an email now and a held item for the digest.
            Subscription.frequency,
            func.row_number().over(partition_by=Subscription.subscriber_id, order_by=Subscription.id).label("rank"),
        )
        .select_from(source)
        .where(*where)
        .subquery()
    )


@functools.cache
def _matching_insert(
    kind: SubscriptionKind,
    broader: bool,
    recruiting: bool,
    countries: bool,
    phases: bool,
    select_only: bool = False,
    chunked: bool = False,
    confirmed_before: bool = False,
    eligibility: tuple[bool, bool, bool] = (False, False, False),
    near: tuple[bool, tuple[str, ...]] | None = None,
) -> Executable:
    """The INSERT ... SELECT for one shape of event, built once: values are bound at execution.

    Parameters: those of ``_candidates``. Only subscriptions whose owner is emailed immediately; digest
    subscriptions get held items (``_holding_insert``, the same candidates).
    """
    candidates = _candidates(kind, broader, recruiting, countries, phases, chunked, confirmed_before, eligibility, near)
    dedupe_key = bindparam("dedupe_key", type_=String())
    now = bindparam("now", type_=Delivery.created_at.type)
    matches = (
        select(
            bindparam("event_id", type_=Integer()),
            candidates.c.subscriber_id,
            candidates.c.subscription_id,
            dedupe_key,
            literal(DeliveryStatus.QUEUED.value, String()),
            literal(0, Integer()),
            now,
            now,
            candidates.c.variant,
        )
        .where(candidates.c.rank == 1, candidates.c.frequency == IMMEDIATELY)
        # Keyset order: delivery ids follow subscriber ids, so batches read the index in order.
        .order_by(candidates.c.subscriber_id)
    )
    if chunked:
        matches = matches.limit(bindparam("chunk", type_=Integer()))
    columns = [
        "event_id",
        "subscriber_id",
        "subscription_id",
        "dedupe_key",
        "status",
        "attempts",
        "created_at",
        "updated_at",
        "variant",
    ]
    if select_only:
        return matches
    return insert(Delivery).from_select(columns, matches)


@functools.cache
def _holding_insert(
    kind: SubscriptionKind,
    broader: bool,
    recruiting: bool,
    countries: bool,
    phases: bool,
    confirmed_before: bool = False,
    eligibility: tuple[bool, bool, bool] = (False, False, False),
) -> Executable:
    """Held items for the digest subscriptions among the same candidates as ``_matching_insert``.

    Deduplicated like deliveries: one item per subscriber and piece of news, and none for news the
    subscriber was already emailed (a subscription switched from immediately to a digest in between).
    """
    candidates = _candidates(
        kind, broader, recruiting, countries, phases, False, confirmed_before, eligibility, plain_variant=True
    )
    dedupe_key = bindparam("dedupe_key", type_=String())
    held = aliased(HeldItem)
    emailed = aliased(Delivery)
    matches = select(
        bindparam("event_id", type_=Integer()),
        candidates.c.subscriber_id,
        candidates.c.subscription_id,
        dedupe_key,
        candidates.c.variant,
        candidates.c.frequency == WEEKLY,
        bindparam("now", type_=HeldItem.created_at.type),
    ).where(
        candidates.c.rank == 1,
        candidates.c.frequency != IMMEDIATELY,
        ~exists().where(held.dedupe_key == dedupe_key, held.subscriber_id == candidates.c.subscriber_id),
        ~exists().where(emailed.dedupe_key == dedupe_key, emailed.subscriber_id == candidates.c.subscriber_id),
    )
    columns = ["event_id", "subscriber_id", "subscription_id", "dedupe_key", "variant", "weekly", "created_at"]
    return insert(HeldItem).from_select(columns, matches)


def _statement(
    event_id: int,
    kind: SubscriptionKind,
    targets: Sequence[str],
    dedupe_key: str,
    broader_targets: Sequence[str],
    facts: TrialFacts | None,
    select_only: bool,
    chunked: bool = False,
    confirmed_before: datetime | None = None,
    near: NearFacts | None = None,
    holding: bool = False,
) -> tuple[Executable | None, dict[str, Any]]:
    direct = list(dict.fromkeys(targets))
    broader = [t for t in dict.fromkeys(broader_targets) if t not in direct]
    if not direct and not broader:
        return None, {}
    facts = facts or TrialFacts()
    condition = kind == SubscriptionKind.CONDITION
    changes = tuple(k for k in places.CHANGE_KINDS if near is not None and getattr(near, k))
    shape = (kind, bool(broader), facts.recruiting or not condition, bool(facts.countries), bool(facts.phases))
    eligibility = (
        (facts.min_age is not None, facts.max_age is not None, facts.sex is not None) if condition else (False,) * 3
    )
    if holding:
        statement = _holding_insert(*shape, confirmed_before is not None, eligibility)
    else:
        statement = _matching_insert(
            *shape,
            select_only,
            chunked,
            confirmed_before is not None,
            eligibility,
            (near.open, changes) if near is not None and (near.open or changes) else None,
        )
    params = {
        "event_id": event_id,
        "dedupe_key": dedupe_key,
        "now": utcnow(),
        "targets": direct + broader,
        "direct": direct,
        "country_values": list(facts.countries),
        "phase_values": list(facts.phases),
        "min_age": facts.min_age,
        "max_age": facts.max_age,
        "trial_sex": facts.sex,
        # A trial without a stored site (or a plan without place facts) has no nearest site anywhere.
        "near_nct_id": near.nct_id if near is not None else "",
    }
    if confirmed_before is not None:
        params["confirmed_before"] = confirmed_before
    for kind_name in changes:
        params[f"{kind_name}_seqs"] = list(getattr(near, kind_name))
    return statement, params


def would_receive(session: Session, event_id: int, plan: MatchPlan, limit: int = 50) -> tuple[int, list[Any]]:
    """Who a replay of the event would newly reach: (count, the first ``limit`` rows), nothing written.

    Rows are (subscriber_id, subscription_id, variant); subscribers already reached by this news are not
    counted (they would get nothing).
    """
    statement, params = _statement(
        event_id,
        plan.kind,
        plan.targets,
        plan.dedupe_key,
        plan.broader_targets,
        plan.facts,
        select_only=True,
        near=plan.near,
    )
    if statement is None:
        return 0, []
    matches = statement.subquery()  # type: ignore[attr-defined]
    connection = session.connection()
    count = int(connection.execute(select(func.count()).select_from(matches), params).scalar_one())
    rows = connection.execute(select(matches).limit(limit), params)
    return count, [(r[1], r[2], r[-1]) for r in rows]


def create_deliveries(
    session: Session,
    event_id: int,
    kind: SubscriptionKind,
    targets: Sequence[str],
    dedupe_key: str,
    *,
    broader_targets: Sequence[str] = (),
    facts: TrialFacts | None = None,
    confirmed_before: datetime | None = None,
    near: NearFacts | None = None,
) -> int:
    """One queued delivery per subscriber with an active subscription that matches (module docstring).

    ``targets`` match directly; ``broader_targets`` (the trial's MeSH ancestors) only subscriptions with
    ``include_narrower``. For kind=condition, ``facts`` decide the filters (None: a trial that is not
    recruiting, with no sites and no phase, so any filtered subscription is left out).

    ``INSERT ... SELECT ... WHERE NOT EXISTS`` a delivery with the same (dedupe_key, subscriber_id): a
    subscriber who follows several matching conditions, or who was already reached by another event
    carrying the same news, gets no second row. (Not ON CONFLICT: SQLAlchemy cannot cache that construct,
    and compiling this statement for every event would cost more than running it. Events of one trial,
    the only ones sharing a dedupe key, are serialized by the trial row lock in ``intake.accept``; the
    unique constraint stays as the backstop.) The delivery's ``variant`` is the label of the condition
    subscription that owns it (which the new-trial email names). With ``confirmed_before``, only
    subscriptions confirmed by then count (``alerts.catchup``). Returns the number of the event's rows.
    """
    statement, params = _statement(
        event_id,
        kind,
        targets,
        dedupe_key,
        broader_targets,
        facts,
        False,
        confirmed_before=confirmed_before,
        near=near,
    )
    if statement is None:
        return 0
    # On the session's connection as plain Core: parameters are bound values, not ORM rows.
    session.connection().execute(statement, params)
    # rowcount of INSERT ... SELECT is not reported by every driver; the (event_id, id) index counts fast.
    return int(session.scalar(select(func.count()).where(Delivery.event_id == event_id)) or 0)


# The advisory lock (db.xact_lock) shared by holding and taken exclusively by the digest schedule tick.
HOLD_LOCK: Final = 0x64696765


def hold_lock(session: Session) -> None:
    """Shared with other transactions that hold items; exclusive to the schedule tick. SQLite serializes
    writers anyway."""
    xact_lock(session, HOLD_LOCK, shared=True)


@functools.cache
def _digest_probe(kind: SubscriptionKind) -> Executable:
    return _digest_audience(kind).limit(1)


def create_held_items(session: Session, event_id: int, plan: MatchPlan) -> int:
    """One held item per subscriber whose matching subscription is a digest (daily or weekly).

    The same candidates, filters and oldest-owns rule as ``create_deliveries`` (one statement builder),
    for every digest subscriber at once: held items are small rows and nothing waits on them to be sent.
    Returns the number created.
    """
    statement, params = _statement(
        event_id, plan.kind, plan.targets, plan.dedupe_key, plan.broader_targets, plan.facts, False, holding=True
    )
    if statement is None:
        return 0
    # Most events have no digest audience at all: one probe of the partial index, and no lock or INSERT.
    probe = _digest_probe(plan.kind)
    if session.connection().execute(probe, {"targets": params["targets"]}).first() is None:
        return 0
    # Before the first held item gets an id: the schedule tick closes windows at an id watermark and must
    # not see a transaction that holds ids below it uncommitted (alerts.digests.schedule).
    hold_lock(session)
    session.connection().execute(statement, params)
    return int(session.scalar(select(func.count()).where(HeldItem.event_id == event_id)) or 0)


@dataclass(frozen=True)
class Chunk:
    """What one chunk of a fan-out created."""

    created: int  # deliveries
    last_subscriber_id: int  # where the next chunk starts (unchanged when nothing was left)
    after_id: int  # the new deliveries are after_id < id <= upto_id
    upto_id: int
    complete: bool  # fewer subscribers than asked were left: the fan-out is done
    # How many of the new deliveries carry each variant (contents.render_variants renders one per kind).
    variants: tuple[tuple[str | None, int], ...] = ()


def create_deliveries_chunk(session: Session, event_id: int, plan: MatchPlan, after: int, chunk: int) -> Chunk:
    """The next ``chunk`` subscribers after subscriber id ``after`` who should get the event: their rows.

    The same matching, filters and deduplication as ``create_deliveries``, over a keyset slice of the
    subscribers, so a large fan-out commits (and starts sending) chunk by chunk. The caller must hold the
    event's row lock (``alerts.fanout``): chunks of one event never run side by side, so the rows after
    this event's highest delivery id are exactly this chunk's.
    """
    statement, params = _statement(
        event_id,
        plan.kind,
        plan.targets,
        plan.dedupe_key,
        plan.broader_targets,
        plan.facts,
        False,
        chunked=True,
        near=plan.near,
    )
    if statement is None:
        return Chunk(0, after, 0, 0, True)
    # The chunk is the next ``chunk`` candidate subscriptions (right target, active) after ``after``:
    # their last subscriber bounds the range, read in order from the matching index. The filters may
    # leave fewer deliveries than that; the fan-out is complete when fewer candidates than that are left.
    bounds = {"targets": params["targets"], "after": after, "offset": chunk - 1}
    found = session.execute(_chunk_bound(plan.kind), bounds).scalar()
    complete = found is None
    upto = int(found) if found is not None else 2**62
    keyset = {"after": after, "chunk": chunk, "upto": upto}
    made = _inserted(session, statement, params | keyset)
    last = made.last_subscriber_id
    cursor = upto if not complete else (last if last is not None else after)
    # Chunks of one event run one after another (the caller holds its lock), so its earlier rows all have
    # lower ids: the chunk's rows are the event's rows in (first_id - 1, last_id].
    after_id, upto_id = (made.first_id - 1, made.last_id) if made.created else (0, 0)
    return Chunk(made.created, cursor, after_id, upto_id, complete, made.variants)


@functools.cache
def _chunk_bound(kind: SubscriptionKind) -> Executable:
    """The subscriber ``:offset`` places after ``:after`` among the active followers of ``:targets``."""
    return (
        select(Subscription.subscriber_id)
        .where(
            Subscription.kind == kind.value,
            one_of(Subscription.target, "targets"),
            Subscription.status == SubscriptionStatus.ACTIVE.value,
            Subscription.subscriber_id > bindparam("after", type_=BigInteger()),
        )
        .order_by(Subscription.subscriber_id)
        .offset(bindparam("offset", type_=Integer()))
        .limit(1)
    )


@functools.cache
def _returning(statement: Executable) -> Executable:
    """The deliveries INSERT returning each row's id, subscriber and variant (built once per shape)."""
    return statement.returning(  # type: ignore[attr-defined,no-any-return]
        Delivery.id, Delivery.subscriber_id, Delivery.variant
    )


@functools.cache
def _summarized(statement: Executable) -> Executable:
    """The deliveries INSERT as a data-modifying CTE, summed up per variant: how many rows, the last
    subscriber, the first and last ids."""
    rows = _returning(statement).cte("made")  # type: ignore[attr-defined]
    return select(
        rows.c.variant, func.count(), func.max(rows.c.subscriber_id), func.min(rows.c.id), func.max(rows.c.id)
    ).group_by(rows.c.variant)


@dataclass(frozen=True)
class _Made:
    created: int
    last_subscriber_id: int | None
    first_id: int
    last_id: int
    variants: tuple[tuple[str | None, int], ...]


def _inserted(session: Session, statement: Executable, params: dict[str, Any]) -> _Made:
    """Run a deliveries INSERT ... SELECT: how many rows (per variant), the last subscriber, the first and
    last ids.

    Told by the INSERT itself (RETURNING), not read back afterwards: ``max(id) WHERE event_id = ?`` on a
    new event was planned as a backward walk of the whole primary key. On PostgreSQL the rows are counted
    where they are made (a data-modifying CTE); SQLite returns them (one chunk's, at most).
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        groups = [tuple(row) for row in connection.execute(_summarized(statement), params)]
    else:
        by_variant: dict[str | None, list[tuple[int, int]]] = {}
        for delivery_id, subscriber_id, variant in connection.execute(_returning(statement), params):
            by_variant.setdefault(variant, []).append((int(delivery_id), int(subscriber_id)))
        groups = [
            (variant, len(made), max(s for _, s in made), min(i for i, _ in made), max(i for i, _ in made))
            for variant, made in by_variant.items()
        ]
    if not groups:
        return _Made(0, None, 0, 0, ())
    return _Made(
        created=sum(int(g[1]) for g in groups),
        last_subscriber_id=max(int(g[2]) for g in groups),
        first_id=min(int(g[3]) for g in groups),
        last_id=max(int(g[4]) for g in groups),
        variants=tuple((g[0], int(g[1])) for g in groups),
    )


def batch_ranges(
    session: Session, event_id: int, batch_size: int, status: DeliveryStatus | None = None, after_id: int = 0
) -> Iterator[tuple[int, int]]:
    """(after_id, upto_id] ranges of at most ``batch_size`` deliveries of an event, in id order.

    One window-function query returns only every batch_size-th id, so memory is N/batch_size ids, and
    each send task claims its range through the (event_id, id) index. With ``status``, only rows in that
    status count (re-queueing what is left of a half-sent event); with ``after_id``, only rows after it
    (the chunk a fan-out just created).
    """
    condition = (Delivery.event_id == event_id) & (Delivery.id > after_id)
    if status is not None:
        condition = condition & (Delivery.status == status.value)
    # One pass: each row's position and the total come from window functions over the same scan.
    numbered = (
        select(
            Delivery.id,
            func.row_number().over(order_by=Delivery.id).label("rn"),
            func.count().over().label("total"),
        )
        .where(condition)
        .subquery()
    )
    ends = (
        select(numbered.c.id)
        .where((numbered.c.rn % batch_size == 0) | (numbered.c.rn == numbered.c.total))
        .order_by(numbered.c.id)
    )
    after = after_id
    for upto in session.scalars(ends):
        yield after, int(upto)
        after = int(upto)
