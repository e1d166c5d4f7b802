"""A subscriber's "Can I take part?" preferences: place, distance, age, sex. Parsing, rules, storage.

Every field is optional and stored only as given: a gazetteer city id (never the person's coordinates),
a distance (25, 50, 100, 250 or 500, in km or miles; none: anywhere), "only trials with a recruiting site
that close", an age in whole years and a sex. They belong to the person, not to one alert: every condition
alert of theirs uses them (``alerts.matching``), and their emails name the nearest site (``alerts.emails``).
Erasure deletes them with the subscriber row.

Who may set them: the owner from the manage page or the API (manage token), and a sign-up, but only while
the address has no active alert (``offer``). Anyone can type an address into a sign-up form; until the
owner confirms, nothing is sent, so what the form said cannot change what an active subscriber receives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from alerts import places
from alerts.eligibility import SEXES
from alerts.models import Subscriber, Subscription, SubscriptionStatus

MAX_AGE: Final = 120
ANYWHERE: Final = "anywhere"


class InvalidPreference(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Preferences:
    """What a subscriber told us; None everywhere (the default) means "not given"."""

    city_id: int | None = None
    distance: int | None = None  # one of places.DISTANCES, in ``unit``; None: anywhere
    unit: places.Unit = "km"
    recruiting_sites_only: bool = False
    age: int | None = None
    sex: str | None = None  # "FEMALE" | "MALE"

    @property
    def distance_km(self) -> float | None:
        return places.to_km(self.distance, self.unit) if self.distance is not None else None

    @property
    def city(self) -> places.Place | None:
        return places.place(self.city_id) if self.city_id is not None else None

    def describe(self) -> list[str]:
        """Plain lines for pages: "Near Arnhem, Netherlands, within 50 km", "Age 54", "Sex: female"."""
        lines = []
        city = self.city
        if city is not None:
            reach = (
                f"within {self.distance} {'miles' if self.unit == 'mi' else 'km'}" if self.distance else "any distance"
            )
            lines.append(f"Near {city.label}, {reach}" + (" (open sites only)" if self.recruiting_sites_only else ""))
        if self.age is not None:
            lines.append(f"Age {self.age}")
        if self.sex is not None:
            lines.append(f"Sex: {self.sex.lower()}")
        return lines


def parse(
    *,
    city: Any = None,
    city_name: Any = None,
    distance: Any = None,
    unit: Any = None,
    recruiting_sites_only: Any = False,
    age: Any = None,
    sex: Any = None,
) -> Preferences:
    """Validate what a form or the API sent. Raises InvalidPreference(field, plain message).

    ``city`` is a gazetteer id (what the autocomplete picks); without it, ``city_name`` is looked up
    and the most populous match is taken. ``distance`` is a number of ``unit`` (km or mi), or a form value
    such as "50km" / "25mi" / "anywhere". Empty strings mean "not given".
    """
    chosen = _city(city, city_name)
    value, unit_code = _distance(distance, unit)
    if value is not None and chosen is None:
        raise InvalidPreference("distance", "Choose a city to measure the distance from.")
    only_open = recruiting_sites_only in (True, "true", "on", "yes", "1", 1)
    return Preferences(
        city_id=chosen.id if chosen is not None else None,
        distance=value,
        unit=unit_code,
        recruiting_sites_only=only_open and chosen is not None,
        age=_age(age),
        sex=_sex(sex),
    )


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _city(city: Any, city_name: Any) -> places.Place | None:
    if not _blank(city):
        try:
            found = places.place(int(str(city).strip()))
        except ValueError:
            found = None
        if found is None:
            raise InvalidPreference("city", "We don't know that city. Start typing its name and pick it from the list.")
        return found
    if _blank(city_name):
        return None
    matches = places.gazetteer().search(str(city_name)[:200], limit=1)
    if not matches:
        raise InvalidPreference("city", "We don't know that city. Try the nearest larger town.")
    return matches[0]


def _distance(distance: Any, unit: Any) -> tuple[int | None, places.Unit]:
    unit_code: places.Unit = "mi" if str(unit or "").strip().lower() in ("mi", "mile", "miles") else "km"
    if _blank(distance) or str(distance).strip().lower() == ANYWHERE:
        return None, unit_code
    text = str(distance).strip().lower().replace(" ", "")
    for suffix, code in (("km", "km"), ("mi", "mi")):
        if text.endswith(suffix):
            text, unit_code = text.removesuffix(suffix), code  # type: ignore[assignment]
    if not text.isdigit() or int(text) not in places.DISTANCES:
        choices = ", ".join(str(d) for d in places.DISTANCES)
        raise InvalidPreference("distance", f"Choose a distance of {choices}, or anywhere.")
    return int(text), unit_code


def _age(age: Any) -> int | None:
    if _blank(age):
        return None
    text = str(age).strip()
    if isinstance(age, bool) or not text.isdigit() or not 0 <= int(text) <= MAX_AGE:
        raise InvalidPreference("age", f"Enter your age in years, as a whole number from 0 to {MAX_AGE}.")
    return int(text)


def _sex(sex: Any) -> str | None:
    if _blank(sex) or str(sex).strip().lower() in ("any", "all", "not given"):
        return None
    code = str(sex).strip().upper()
    if code not in SEXES:
        raise InvalidPreference("sex", "Choose female or male, or leave it blank.")
    return code


def of(subscriber: Subscriber) -> Preferences:
    return stored(
        subscriber.city_id,
        subscriber.distance_km,
        subscriber.distance_unit,
        subscriber.recruiting_sites_only,
        subscriber.age,
        subscriber.sex,
    )


def stored(
    city_id: int | None,
    distance_km: float | None,
    distance_unit: str | None,
    recruiting_sites_only: bool,
    age: int | None,
    sex: str | None,
) -> Preferences:
    """``of`` from a subscriber's columns as read (``alerts.linkreads``: one row, no ORM object to build)."""
    unit: places.Unit = "mi" if distance_unit == "mi" else "km"
    distance = None
    if distance_km is not None:
        distance = min(places.DISTANCES, key=lambda d: abs(places.to_km(d, unit) - distance_km))
    return Preferences(
        city_id=city_id,
        distance=distance,
        unit=unit,
        recruiting_sites_only=recruiting_sites_only,
        age=age,
        sex=sex,
    )


def set_preferences(session: Session, subscriber_id: int, preferences: Preferences) -> Subscriber | None:
    """Store a subscriber's preferences, replacing all of them (a field not given is cleared)."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    city = preferences.city
    if city is not None:
        places.remember_city(session, city)
    subscriber.city_id = city.id if city is not None else None
    subscriber.distance_km = preferences.distance_km if city is not None else None
    subscriber.distance_unit = preferences.unit if city is not None else None
    subscriber.recruiting_sites_only = preferences.recruiting_sites_only and city is not None
    subscriber.age = preferences.age
    subscriber.sex = preferences.sex
    return subscriber


def offer(session: Session, subscriber_id: int, preferences: Preferences | None) -> bool:
    """Preferences sent with a sign-up: stored unless the address already has an active alert.

    Returns whether they were stored. (An active subscriber changes them from the manage page.)
    """
    if preferences is None:
        return False
    active = session.scalar(
        select(
            exists().where(
                Subscription.subscriber_id == subscriber_id, Subscription.status == SubscriptionStatus.ACTIVE.value
            )
        )
    )
    if active:
        return False
    return set_preferences(session, subscriber_id, preferences) is not None


def from_mapping(data: Mapping[str, Any]) -> Preferences:
    """``parse`` over a dict of the API's / form's field names."""
    return parse(
        city=data.get("city_id"),
        city_name=data.get("city"),
        distance=data.get("distance"),
        unit=data.get("distance_unit"),
        recruiting_sites_only=data.get("recruiting_sites_only", False),
        age=data.get("age"),
        sex=data.get("sex"),
    )
