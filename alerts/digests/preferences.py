"""Digest preferences: frequency per subscription; time zone, local hour and weekday per subscriber.

Parsing and validation live here so every entry point (the sign-up form, ``POST /api/subscriptions``, the
manage page, the CLI, a future sign-up flow) accepts the same values and says the same thing about bad
ones. ``set_preferences`` and ``set_frequency`` are the domain functions they call; both keep the
subscriber's schedule (``digest_cadence``, ``digest_due_at``) in step, which is what the schedule tick
reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib.resources import files
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import select
from sqlalchemy.orm import Session

from alerts.digests.windows import DAILY, WEEKLY, next_close
from alerts.models import Subscriber, Subscription, SubscriptionStatus, utcnow

IMMEDIATELY: Final = "immediately"
FREQUENCIES: Final = (IMMEDIATELY, DAILY, WEEKLY)
FREQUENCY_LABELS: Final = {IMMEDIATELY: "As it happens", DAILY: "Once a day", WEEKLY: "Once a week"}
DEFAULT_TIME_ZONE: Final = "UTC"
DEFAULT_HOUR: Final = 8
DEFAULT_WEEKDAY: Final = 0  # Monday
WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# The forms' menus as (value, label) pairs: built once, not on every page that offers them.
FREQUENCY_CHOICES: Final = tuple((value, FREQUENCY_LABELS[value]) for value in FREQUENCIES)
HOUR_CHOICES: Final = tuple((h, f"{h:02d}:00") for h in range(24))
WEEKDAY_CHOICES: Final = tuple(enumerate(WEEKDAYS))


class InvalidPreference(ValueError):
    """A preference cannot be used; the message says why, in words a subscriber understands."""


@lru_cache(maxsize=1)
def time_zones() -> tuple[str, ...]:
    """Every IANA zone name this installation knows (the tzdata package on systems without a zone database):
    what a form may send (a browser may report an old name, such as Asia/Calcutta)."""
    return tuple(sorted(available_timezones()))


@lru_cache(maxsize=1)
def menu_time_zones() -> tuple[str, ...]:
    """The zones a person chooses from: UTC and the IANA's list of one zone per country region (zone.tab, ~420),
    so every country has its own city to pick (zone1970.tab would show Amsterdam's clock as Brussels).

    Not every name the database knows (~600): the rest are old names for the same places (US/Eastern,
    Asia/Calcutta) and POSIX-style entries whose sign reads backwards (Etc/GMT+5 is five hours *behind*),
    which only confuse. It also makes the largest part of the manage page a third smaller.
    """
    listed = files("tzdata").joinpath("zoneinfo", "zone.tab").read_text(encoding="utf-8")
    names = {line.split("\t")[2] for line in listed.splitlines() if line and not line.startswith("#")}
    known = set(time_zones())
    return (DEFAULT_TIME_ZONE, *sorted((names & known) - {DEFAULT_TIME_ZONE}))


@lru_cache(maxsize=1)
def _in_menu() -> frozenset[str]:
    return frozenset(menu_time_zones())


def parse_frequency(value: str | None) -> str:
    text = (value or IMMEDIATELY).strip().lower()
    if text not in FREQUENCIES:
        raise InvalidPreference(f"frequency must be one of {', '.join(FREQUENCIES)}")
    return text


def parse_time_zone(value: str | None) -> str:
    """An IANA zone name as the browser reports it (``Intl.DateTimeFormat().resolvedOptions().timeZone``)."""
    text = (value or DEFAULT_TIME_ZONE).strip()
    # ZoneInfo would also open a path such as "../../etc/passwd"-like keys; accept only names it lists.
    if len(text) > 64 or text not in time_zones():
        raise InvalidPreference("time zone must be an IANA name such as Europe/Paris or America/New_York")
    return text


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # A name that was valid once and is gone from the zone database: UTC rather than no digest.
        return ZoneInfo(DEFAULT_TIME_ZONE)


def parse_hour(value: int | str | None) -> int:
    if value is None or value == "":
        return DEFAULT_HOUR
    text = str(value).strip()
    if ":" in text:  # "08:00" from a time picker; minutes must be zero
        text, _, minutes = text.partition(":")
        if minutes.strip() not in ("00", "0"):
            raise InvalidPreference("digests go out on the hour: choose a time like 08:00")
    if not text.isdigit() or not 0 <= int(text) <= 23:
        raise InvalidPreference("hour must be a whole hour from 0 to 23")
    return int(text)


def parse_weekday(value: int | str | None) -> int:
    if value is None or value == "":
        return DEFAULT_WEEKDAY
    text = str(value).strip()
    if text.isdigit() and 0 <= int(text) <= 6:
        return int(text)
    names = {name.lower(): i for i, name in enumerate(WEEKDAYS)} | {
        name[:3].lower(): i for i, name in enumerate(WEEKDAYS)
    }
    if text.lower() in names:
        return names[text.lower()]
    raise InvalidPreference("weekday must be a day name (Monday) or a number from 0 (Monday) to 6 (Sunday)")


@dataclass(frozen=True)
class DigestPreferences:
    """A subscriber's digest time; each field None means "leave as it is" when applied."""

    time_zone: str | None = None
    hour: int | None = None
    weekday: int | None = None

    @classmethod
    def parse(
        cls, time_zone: str | None = None, hour: int | str | None = None, weekday: int | str | None = None
    ) -> DigestPreferences:
        """Validated preferences from raw input (form fields, JSON); blanks stay None. Raises InvalidPreference."""
        return cls(
            time_zone=parse_time_zone(time_zone) if time_zone not in (None, "") else None,
            hour=parse_hour(hour) if hour not in (None, "") else None,
            weekday=parse_weekday(weekday) if weekday not in (None, "") else None,
        )

    @classmethod
    def from_form(cls, form: Mapping[str, object]) -> DigestPreferences:
        def text(name: str) -> str | None:
            value = form.get(name)
            return value if isinstance(value, str) else None

        return cls.parse(text("time_zone"), text("digest_hour"), text("digest_weekday"))


def cadence_of(session: Session, subscriber_id: int) -> str | None:
    """The shortest frequency among the subscriber's digest subscriptions that are not unsubscribed."""
    found = set(
        session.scalars(
            select(Subscription.frequency).where(
                Subscription.subscriber_id == subscriber_id,
                Subscription.status != SubscriptionStatus.UNSUBSCRIBED.value,
                Subscription.frequency != IMMEDIATELY,
            )
        )
    )
    return DAILY if DAILY in found else WEEKLY if WEEKLY in found else None


def refresh_schedule(session: Session, subscriber: Subscriber, now: datetime | None = None) -> None:
    """Recompute when the subscriber's next window closes, after any change to frequency or time.

    A subscriber left without digest subscriptions keeps a due time while they still have held items
    (the tick sends them at the next window, then clears it).
    """
    cadence = cadence_of(session, subscriber.id)
    subscriber.digest_cadence = cadence
    if cadence is None and subscriber.digest_due_at is None:
        return
    subscriber.digest_due_at = next_close(
        now or utcnow(), zone(subscriber.time_zone), subscriber.digest_hour, subscriber.digest_weekday, cadence
    )


def apply_preferences(session: Session, subscriber: Subscriber, preferences: DigestPreferences) -> None:
    if preferences.time_zone is not None:
        subscriber.time_zone = preferences.time_zone
    if preferences.hour is not None:
        subscriber.digest_hour = preferences.hour
    if preferences.weekday is not None:
        subscriber.digest_weekday = preferences.weekday
    refresh_schedule(session, subscriber)


def set_preferences(session: Session, subscriber_id: int, preferences: DigestPreferences) -> Subscriber | None:
    """Change a subscriber's digest time (the manage page); the next window moves with it."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is not None:
        apply_preferences(session, subscriber, preferences)
    return subscriber


def set_frequency(session: Session, subscription_id: int, frequency: str) -> Subscription | None:
    """Change how often a subscription emails. Items already held go out at the subscriber's next window."""
    value = parse_frequency(frequency)
    subscription = session.get(Subscription, subscription_id)
    if subscription is None:
        return None
    subscription.frequency = value
    session.flush()
    refresh_schedule(session, subscription.subscriber)
    return subscription


@dataclass(frozen=True)
class DigestChoice:
    """What a sign-up asks for: a frequency for its subscriptions and, for digests, when they arrive.

    The one object sign-up flows (form, JSON API, a future one) hand to ``subscriptions.sign_up``.
    """

    frequency: str | None = None
    preferences: DigestPreferences | None = None

    @classmethod
    def parse(
        cls,
        frequency: str | None = None,
        time_zone: str | None = None,
        hour: int | str | None = None,
        weekday: int | str | None = None,
    ) -> DigestChoice:
        """Raises InvalidPreference, whose message names the problem."""
        preferences = DigestPreferences.parse(time_zone, hour, weekday)
        empty = preferences == DigestPreferences()
        return cls(parse_frequency(frequency) if frequency else None, None if empty else preferences)

    @classmethod
    def from_form(cls, form: Mapping[str, object]) -> DigestChoice:
        def text(name: str) -> str | None:
            value = form.get(name)
            return value if isinstance(value, str) else None

        return cls.parse(text("frequency"), text("time_zone"), text("digest_hour"), text("digest_weekday"))

    def as_json(self) -> dict[str, object]:
        """For a sign-up recorded now and applied later (a queued task): ``from_json`` validates it again."""
        p = self.preferences or DigestPreferences()
        return {
            "frequency": self.frequency,
            "time_zone": p.time_zone,
            "digest_hour": p.hour,
            "digest_weekday": p.weekday,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> DigestChoice:
        def value(name: str) -> str | None:
            raw = data.get(name)
            return None if raw is None else str(raw)

        return cls.parse(value("frequency"), value("time_zone"), value("digest_hour"), value("digest_weekday"))


def form_context(
    frequency: str | None = None, time_zone: str | None = None, hour: int | None = None, weekday: int | None = None
) -> dict[str, object]:
    """What the sign-up form and the manage page need to offer the choices (templates/web/_digest_fields.html)."""
    return {
        "digest": {
            "frequencies": FREQUENCY_CHOICES,
            "frequency": frequency or IMMEDIATELY,
            "hours": HOUR_CHOICES,
            "hour": DEFAULT_HOUR if hour is None else hour,
            "weekdays": WEEKDAY_CHOICES,
            "weekday": DEFAULT_WEEKDAY if weekday is None else weekday,
            "time_zones": menu_time_zones(),
            "time_zone": time_zone or DEFAULT_TIME_ZONE,
            # A valid zone not in the menu (an old name a browser reported): offered first, so it stays chosen.
            "time_zone_other": time_zone if time_zone and time_zone not in _in_menu() else None,
        }
    }


def form_context_from(form: Mapping[str, object] | None) -> dict[str, object]:
    """``form_context`` with what a submitted form chose (a form shown again with errors keeps them)."""
    if form is None:
        return form_context() | {"digest_zone_from_browser": True}

    def text(name: str) -> str | None:
        value = form.get(name)
        return value if isinstance(value, str) else None

    frequency = text("frequency")
    zone_name = text("time_zone")
    hour, weekday = text("digest_hour"), text("digest_weekday")
    return form_context(
        frequency if frequency in FREQUENCIES else None,
        zone_name if zone_name in time_zones() else None,
        int(hour) if hour and hour.isdigit() and int(hour) < 24 else None,
        int(weekday) if weekday and weekday.isdigit() and int(weekday) < 7 else None,
    ) | {"digest_zone_from_browser": zone_name is None}
