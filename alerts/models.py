"""Database tables (SQLAlchemy 2, typed). Schema changes go through Alembic (``alerts/migrations``)."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# A delivery's variant: a followed label (up to 300) plus a nearby-site outcome. Widened to 400 on
# PostgreSQL by migration 0013 (a catalog change); SQLite does not enforce lengths and could only widen by
# rebuilding the table (see 0002), so its declared length stays 300.
# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
Id = BigInteger().with_variant(Integer(), "sqlite")
Variant = String(400).with_variant(String(300), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")
# Active digest subscriptions (alerts.digests): the predicate of their partial index, written out in the
# queries that use it (alerts.matching) so that both planners can prove they may.
DIGEST_WHERE = "frequency <> 'immediately' AND status = 'active'"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both engines (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use alerts.models.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class SubscriptionKind(enum.StrEnum):
    TRIAL = "trial"
    CONDITION = "condition"


class SubscriptionStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"


class EventStatus(enum.StrEnum):
    FANNED_OUT = "fanned_out"  # deliveries created (possibly zero recipients)
    FANNING_OUT = "fanning_out"  # a large fan-out, creating its deliveries chunk by chunk (alerts.fanout)
    NO_OP = "no_op"  # valid, but nothing material to tell anyone


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    SKIPPED = "skipped"  # subscription ended or address erased before sending


class Subscriber(Base):
    __tablename__ = "subscribers"
    # Ids are in signed links; SQLite must never hand an erased subscriber's id to someone new.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    # Keyed hash of the address: lets logs and suppressions refer to a person without the address.
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Signed once at creation: the manage link never changes, so sending never signs it again.
    manage_token: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # "Can I take part?" (alerts.preferences), each optional and only as given: a gazetteer city (its id,
    # never the person's coordinates), how far they would travel (None: anywhere) and in which unit they
    # read distances, only trials with a recruiting site within that distance, age in years and sex.
    city_id: Mapped[int | None] = mapped_column(Integer)
    distance_km: Mapped[float | None] = mapped_column(Float)
    distance_unit: Mapped[str | None] = mapped_column(String(2))
    recruiting_sites_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    age: Mapped[int | None] = mapped_column(Integer)
    sex: Mapped[str | None] = mapped_column(String(6))  # "FEMALE" | "MALE"
    # Digests (alerts.digests): when the subscriber's daily or weekly email goes out, in their own time.
    # An IANA zone name ("Europe/Paris"), the local hour (0-23) and, for weekly digests, the weekday
    # (0 = Monday, as datetime.weekday()).
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    digest_hour: Mapped[int] = mapped_column(Integer, default=8, server_default="8")
    digest_weekday: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The shortest frequency among the subscriber's digest subscriptions ("daily" or "weekly"), and the
    # next window close (UTC) at or after which the schedule tick builds their digest. Both None for a
    # subscriber with only immediate alerts: the tick never reads them. Kept by alerts.digests.preferences.
    digest_cadence: Mapped[str | None] = mapped_column(String(16))
    digest_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    # Watermarks: the last held item id their digests have carried, for daily and for weekly items.
    digest_daily_upto: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), default=0, server_default="0"
    )
    digest_weekly_upto: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), default=0, server_default="0"
    )

    subscriptions: Mapped[list[Subscription]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", passive_deletes=True
    )


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "kind", "target", name="uq_subscriptions_subscriber_target"),
        # Matching reads active subscriptions by target, in subscriber order.
        Index("ix_subscriptions_match", "kind", "target", "status", "subscriber_id"),
        # The few active digest subscriptions, by target: matching asks it whether an event has any digest
        # audience at all before it holds items (most events have none), and which subscribers to rank.
        Index(
            "ix_subscriptions_digest",
            "kind",
            "target",
            "subscriber_id",
            postgresql_where=text(DIGEST_WHERE),
            sqlite_where=text(DIGEST_WHERE),
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    # An NCT ID for kind=trial, a normalized condition key (alerts.conditions.condition_key) otherwise: a
    # condition subscription follows its phrase, which means what ``condition_meanings`` says today. (Before
    # migration 0011 a known phrase was pinned to one concept, "mesh:D007405"; a few such rows may remain and
    # follow that concept alone.)
    target: Mapped[str] = mapped_column(String(300))
    # What the subscriber chose, as shown to them ("Acute-On-Chronic Liver Failure").
    label: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default=SubscriptionStatus.PENDING)
    unsubscribe_token: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    confirm_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Condition subscriptions: also match trials filed under a concept narrower than what the phrase means,
    # i.e. trials whose MeSH ancestors include one of its concepts. An explicit choice, never inferred.
    # Semantics: alerts.matching.create_deliveries.
    include_narrower: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Condition subscriptions: only trials recruiting or not yet recruiting. Countries and phases:
    # SubscriptionFilter rows.
    recruiting_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # "immediately" (an email per event, the default), "daily" or "weekly" (held items, alerts.digests).
    frequency: Mapped[str] = mapped_column(String(16), default="immediately", server_default="immediately")

    subscriber: Mapped[Subscriber] = relationship(back_populates="subscriptions")


class Trial(Base):
    """The last version of a study record the service has seen (what `trial.changed` diffs against)."""

    __tablename__ = "trials"

    nct_id: Mapped[str] = mapped_column(String(11), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    record: Mapped[dict[str, Any]] = mapped_column(Json)
    fingerprint: Mapped[str] = mapped_column(String(64))
    # occurred_at of the event that stored this version: an older event never overwrites a newer one.
    version_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    nct_id: Mapped[str] = mapped_column(String(11), index=True)
    condition: Mapped[str | None] = mapped_column(String(300))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    # Plain-language changes (trial.changed) as a list of dicts; shown in emails and to operators.
    changes: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    # The shared rendering (subject, text, html with per-recipient placeholders), made once per event.
    content: Mapped[dict[str, Any] | None] = mapped_column(Json)
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    # How the event was matched (kind, targets, broader targets, trial facts, dedupe key), so an operator
    # can replay it later (alerts replay) against today's subscriptions.
    match: Mapped[dict[str, Any] | None] = mapped_column(Json)
    # While fanning out: the subscriber id the next chunk starts after, and when the last chunk committed
    # (maintenance resumes a fan-out whose worker died). Both None once every delivery exists.
    fanout_cursor: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    fanout_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RejectedEvent(Base):
    __tablename__ = "rejected_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    source: Mapped[str] = mapped_column(String(20))
    event_type: Mapped[str | None] = mapped_column(String(100))
    producer_event_id: Mapped[str | None] = mapped_column(String(200))
    # [{"field": "trial.protocolSection.identificationModule.nctId", "message": "..."}]
    errors: Mapped[list[dict[str, str]]] = mapped_column(Json)
    payload_excerpt: Mapped[str] = mapped_column(Text, default="")


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        # One email per subscriber per piece of news, whichever event(s) carried it.
        UniqueConstraint("dedupe_key", "subscriber_id", name="uq_deliveries_dedupe_subscriber"),
        Index("ix_deliveries_event_id_id", "event_id", "id"),
        # No index on status, lease_until or provider_message_id (migration 0005): each delivery row is
        # updated twice (claimed, then recorded); without indexes on the updated columns, and with room
        # left in each page (fillfactor), PostgreSQL updates it in place (HOT) instead of touching every
        # index. The maintenance pass reads status by a scan once a minute instead. (fillfactor 45 is set
        # by migrations 0005-0006; SQLAlchemy has no table option for it.)
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # No foreign keys on this table (migration 0003): a fan-out inserts 100,000 rows at once, and a
    # per-row foreign-key check tripled its cost. The application keeps the references honest: events are
    # never deleted, and erasure (subscriptions.erase) and expiry clear subscriber_id / subscription_id
    # themselves, so the history row stays without any address.
    event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    subscriber_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    subscription_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), index=True)
    dedupe_key: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    # Provider's HTTP status for a failure (400, 401, 413...), for operators grouping failures.
    error_code: Mapped[int | None] = mapped_column(Integer)
    # Sends retried after a timeout, where the provider may or may not have accepted the first try.
    ambiguous_retries: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Which shared rendering this recipient gets (alerts.contents): the label of the condition they follow
    # for new-trial emails; None for the event's one rendering (Event.content).
    # Plus, for a subscriber with a place, what their email says about nearby sites (alerts.places.outcome_sql).
    variant: Mapped[str | None] = mapped_column(Variant)


class Suppression(Base):
    """Addresses we must never email again (hard bounce, spam report), kept as a keyed hash only."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(100))
    # Where it came from: "sendgrid:bounce", "sendgrid:spamreport", "operator"...
    source: Mapped[str] = mapped_column(String(100), default="operator")
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookEvent(Base):
    """Provider events already processed; SendGrid retries and duplicates them, we apply each once."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    provider: Mapped[str] = mapped_column(String(20), default="sendgrid")
    provider_event_id: Mapped[str] = mapped_column(String(200), unique=True)
    event: Mapped[str] = mapped_column(String(40))
    delivery_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeliveryCount(Base):
    """Daily delivery totals by status, kept when old delivery rows are pruned."""

    __tablename__ = "delivery_counts"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


# --- condition vocabulary, filters, per-variant renderings (alerts.vocabulary, alerts.contents) -------

# Searched by prefix with range conditions (suffix >= 'dis' AND suffix < 'dit'): byte order on both engines.
SearchKey = String(300).with_variant(String(300, collation="C"), "postgresql")


class SubscriptionFilter(Base):
    """Optional narrowing of a condition subscription: one row per accepted country or phase."""

    __tablename__ = "subscription_filters"

    subscription_id: Mapped[int] = mapped_column(
        Id, ForeignKey("subscriptions.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "country" | "phase"
    # Compared with the trial's: a condition key for a country ("united states"), a phase code ("PHASE2").
    value: Mapped[str] = mapped_column(String(100), primary_key=True)
    # As shown to the subscriber ("United States", "Phase 2").
    label: Mapped[str] = mapped_column(String(100))


class EventContent(Base):
    """One shared rendering of an event's email per variant (e.g. per followed condition label)."""

    __tablename__ = "event_contents"

    event_id: Mapped[int] = mapped_column(Id, ForeignKey("events.id", ondelete="CASCADE"), primary_key=True)
    variant: Mapped[str] = mapped_column(Variant, primary_key=True)
    subject: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)


class ConditionConcept(Base):
    """A MeSH descriptor seen in records, with how many trials are filed under it."""

    __tablename__ = "condition_concepts"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)  # "D007405" (alerts.vocabulary.concept_id)
    term: Mapped[str] = mapped_column(String(300))
    term_key: Mapped[str] = mapped_column(String(300), index=True)
    # Trials whose MeSH concepts include it / include it or a narrower concept (it is among their ancestors).
    trials: Mapped[int] = mapped_column(Integer, default=0)
    trials_with_narrower: Mapped[int] = mapped_column(Integer, default=0)


class ConditionPhrase(Base):
    """A condition phrase seen in records (sponsor's words, NLM's asFound, MeSH terms), by condition key."""

    __tablename__ = "condition_phrases"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    label: Mapped[str] = mapped_column(String(300))  # as first seen
    trials: Mapped[int] = mapped_column(Integer, default=0)  # trials using it
    # Its main concept (the one with the most evidence among ``condition_meanings``); None while no record
    # has tied it to a concept.
    concept_id: Mapped[str | None] = mapped_column(ForeignKey("condition_concepts.id"))


class ConditionPhraseConcept(Base):
    """Evidence: in how many trials a phrase named a concept."""

    __tablename__ = "condition_phrase_concepts"

    phrase_key: Mapped[str] = mapped_column(ForeignKey("condition_phrases.key"), primary_key=True)
    concept_id: Mapped[str] = mapped_column(ForeignKey("condition_concepts.id"), primary_key=True, index=True)
    trials: Mapped[int] = mapped_column(Integer, default=0)


class ConditionMeaning(Base):
    """What a phrase means: every concept of its resolution (alerts.vocabulary), kept as the evidence changes.

    Condition subscriptions follow their phrase (``Subscription.target`` is its key), so re-resolving a
    phrase moves every subscription that follows it at once. Matching reads it by concept.
    """

    __tablename__ = "condition_meanings"

    phrase_key: Mapped[str] = mapped_column(ForeignKey("condition_phrases.key"), primary_key=True)
    concept_id: Mapped[str] = mapped_column(ForeignKey("condition_concepts.id"), primary_key=True, index=True)


class ConditionAncestry(Base):
    """Which concepts go with which in NLM's filing: the evidence for "A is broader than B".

    ``together``: trials filed under ``concept_id`` that list ``ancestor_id`` among their concepts or
    ancestors; ``as_ancestor``: ... among their ancestors. A record's ancestors are those of all its
    concepts together, so A is broader than B only when every trial filed under B lists A
    (``together`` = the concept's trials) and at least one lists it as an ancestor.
    """

    __tablename__ = "condition_ancestry"

    concept_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    ancestor_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    together: Mapped[int] = mapped_column(Integer, default=0)
    as_ancestor: Mapped[int] = mapped_column(Integer, default=0)


class ConditionResolution(Base):
    """Why a phrase's meaning changed, and how many subscriptions followed it then (operators read this)."""

    __tablename__ = "condition_resolutions"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    phrase_key: Mapped[str] = mapped_column(String(300), index=True)
    resolved_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    before: Mapped[list[str]] = mapped_column(Json, default=list)
    after: Mapped[list[str]] = mapped_column(Json, default=list)
    reason: Mapped[str] = mapped_column(Text)
    subscriptions: Mapped[int] = mapped_column(Integer, default=0)


class ConditionSuffix(Base):
    """Every word-start suffix of every phrase key, for prefix and word search of suggestions."""

    __tablename__ = "condition_suffixes"

    suffix: Mapped[str] = mapped_column(SearchKey, primary_key=True)
    phrase_key: Mapped[str] = mapped_column(ForeignKey("condition_phrases.key"), primary_key=True)


class TrialVocabulary(Base):
    """What each trial's current version contributed to the vocabulary counts (so a new version replaces it)."""

    __tablename__ = "trial_vocabulary"

    nct_id: Mapped[str] = mapped_column(String(11), primary_key=True)
    learned: Mapped[dict[str, Any]] = mapped_column(Json)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- operator counters and the installation's identity (alerts.counters, alerts.installation) ----------


class CounterIncrement(Base):
    """One increment of a count that only grows: provider answers by code, emails sent, ambiguous re-sends.

    Appended (never updated) by whoever counted, in the transaction that recorded what it counts, so every
    process adds to the same totals without a hot row to lock. A total is a sum; a recent window ("429s in
    the last hour") is a sum over ``at``; maintenance folds old increments into one row per counter.
    """

    __tablename__ = "counter_increments"
    __table_args__ = (Index("ix_counter_increments_name_at", "name", "at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    label: Mapped[str] = mapped_column(String(40), default="")
    value: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Installation(Base):
    """This database's identity, generated once: makes Message-IDs unique across installations."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1: one row
    installation_id: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SignupRequest(Base):
    """A sign-up as submitted, waiting for a worker (``alerts.signups``); deleted once the worker decided.

    The web request only records this and queues it, whatever the address: whether the address is new,
    pending or already following is decided by the worker, so the answer's timing cannot tell.
    """

    __tablename__ = "signup_requests"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    # [{"kind": "trial"|"condition", "key": ..., "label": ...}]: targets the web side already vouched for.
    targets: Mapped[list[dict[str, str]]] = mapped_column(Json)
    # What else the submission chose, applied by the worker with the targets (alerts.signups.record):
    # {"preferences": {...}} ("Can I take part?"), {"digest": {...}} (frequency and time).
    options: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Last time it was queued (maintenance re-queues one whose message was lost).
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


# --- the registry watcher (alerts.watch) ---------------------------------------------------------------


class WatchState(Base):
    """The watcher's one row: where the next pass starts, the pass in progress, the lock, the last outcome."""

    __tablename__ = "watch_state"

    name: Mapped[str] = mapped_column(String(20), primary_key=True)  # "ctgov"
    # The next pass asks for records with LastUpdatePostDate >= cursor (the last date a finished pass saw:
    # a day of overlap, absorbed by the deterministic event ids). None: never finished a pass.
    cursor: Mapped[date | None] = mapped_column(Date)
    # The registry's dataTimestamp at the last finished pass: unchanged means nothing new to read.
    data_timestamp: Mapped[str | None] = mapped_column(String(40))
    # Lease lock (alerts.watch.lock): two passes never run at once; a dead holder's lease runs out.
    lock_owner: Mapped[str | None] = mapped_column(String(200))
    lock_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The pass in progress (None when none): its window start, the page token of its next page, its
    # running figures. Committed with each page's work, so a killed pass resumes at the next page.
    pass_window: Mapped[date | None] = mapped_column(Date)
    pass_bootstrap: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    pass_data_timestamp: Mapped[str | None] = mapped_column(String(40))
    # The token that fetches the page in progress (None: the first page) and how many of its records are
    # committed: a page is applied in chunks (alerts.watch.passes.COMMIT_EVERY), each its own transaction.
    pass_page_token: Mapped[str | None] = mapped_column(Text)
    pass_page_offset: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pass_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    pass_max_seen: Mapped[date | None] = mapped_column(Date)
    pass_counts: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    # The last pass that ended (finished, nothing new, or failed): start, end, outcome, figures.
    last_pass: Mapped[dict[str, Any] | None] = mapped_column(Json)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WatchRecord(Base):
    """The content hash of the last version of each trial the watcher read: an identical re-read is skipped."""

    __tablename__ = "watch_records"

    nct_id: Mapped[str] = mapped_column(String(11), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    last_update: Mapped[str | None] = mapped_column(String(10))  # the record's LastUpdatePostDate
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- places (alerts.places) -----------------------------------------------------------------------------


class City(Base):
    """A gazetteer city some subscriber chose (public GeoNames data, copied when chosen), for matching in SQL."""

    __tablename__ = "cities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # GeoNames id
    name: Mapped[str] = mapped_column(String(200))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    # Half-width in degrees of longitude of the band that holds everything within 500 miles (places.lon_span).
    lon_span: Mapped[float] = mapped_column(Float)
    timezone: Mapped[str] = mapped_column(String(64))


class TrialSite(Base):
    """The sites with coordinates of a trial's newest stored version (alerts.places.store_sites)."""

    __tablename__ = "trial_sites"
    # The bounding box reads sites of one trial by latitude band.
    __table_args__ = (Index("ix_trial_sites_nct_id_lat", "nct_id", "lat"),)

    nct_id: Mapped[str] = mapped_column(String(11), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # index in locations[]
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    recruiting: Mapped[bool] = mapped_column(Boolean)  # recruiting or not yet recruiting


# --- digests (alerts.digests) -------------------------------------------------------------------------


class DigestStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    EMPTY = "empty"  # nothing material left once changes were merged or subscriptions ended: no email
    SKIPPED = "skipped"  # subscriber erased before sending


class HeldItem(Base):
    """A matched event held for a subscriber's next digest instead of an email (a digest subscription).

    Created by the same matching statement as deliveries (alerts.matching), unique per subscriber and
    piece of news like deliveries. Never updated: a digest carries the subscriber's items between two
    watermarks (ids), see alerts.digests.schedule, so closing a window writes one row per subscriber,
    not one per item.
    """

    __tablename__ = "held_items"
    __table_args__ = (
        UniqueConstraint("dedupe_key", "subscriber_id", name="uq_held_items_dedupe_subscriber"),
        # Windows and sending read a subscriber's items by id range.
        Index("ix_held_items_subscriber_id_id", "subscriber_id", "id"),
        Index("ix_held_items_event_id", "event_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # No foreign keys, like deliveries: the matching INSERT ... SELECT writes many rows at once, and
    # unsubscribe / erasure delete the rows themselves (alerts.digests.held).
    event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    subscriber_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    subscription_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), index=True)
    dedupe_key: Mapped[str] = mapped_column(String(200))
    # The followed condition label for new-trial items (their group in the digest); None for changes.
    variant: Mapped[str | None] = mapped_column(String(300))
    # Held for a weekly subscription: only the subscriber's weekly window carries it. Fixed when held, so
    # a window's content never depends on a later change of frequency.
    weekly: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Digest(Base):
    """One subscriber's digest for one window: the window is the key, so it is built and sent once."""

    __tablename__ = "digests"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "window_at", name="uq_digests_subscriber_window"),
        # Digest ids are in signed one-click links: SQLite must never hand one out twice.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    # The window's scheduled close (UTC): the subscriber's local hour on a local date.
    window_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The held items it carries: the subscriber's items with daily_after < id <= upto, and, when ``weekly``
    # (the subscriber's weekday, or a weekly cadence), their weekly items with weekly_after < id <= upto.
    weekly: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    daily_after: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), default=0)
    weekly_after: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), default=0)
    upto: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), default=0)
    status: Mapped[str] = mapped_column(String(16), default=DigestStatus.QUEUED)
    items: Mapped[int] = mapped_column(Integer, default=0)  # entries in the email once merged
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TrialVersion(Base):
    """A study record by material fingerprint, kept while digests may need it for a net change."""

    __tablename__ = "trial_versions"

    nct_id: Mapped[str] = mapped_column(String(11), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    record: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DigestFragment(Base):
    """One digest entry rendered and CSS-inlined once, shared by every digest that carries it.

    ``key``: the held items' dedupe key ("new:<nct>" for a new trial, "changed:<nct>:<from>:<to>" for a
    change between two material fingerprints, also a net change over several), or "group:<label>" for the
    heading of a followed condition. An empty ``html`` means the net change was nothing material: the
    entry is left out.
    """

    __tablename__ = "digest_fragments"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "changed" | "new" | "group"
    importance: Mapped[int] = mapped_column(Integer, default=0)
    title: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
