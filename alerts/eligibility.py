"""Who a study accepts, from ``eligibilityModule`` (minimumAge, maximumAge, sex): in numbers and in plain words.

Missing ages mean no limit; a missing or unknown sex means all sexes. A subscriber's age is whole years,
so someone who says "17" may be 17 years and 11 months old: they fit a study whose minimum is 6 months or
17 years, not one whose minimum is 18 years, and they fit a maximum of 17 years, not one of 16.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

SEXES: Final = ("FEMALE", "MALE")
_UNITS: Final[Mapping[str, float]] = {
    "year": 1.0,
    "month": 1 / 12,
    "week": 7 / 365.25,
    "day": 1 / 365.25,
    "hour": 1 / 8766,
    "minute": 1 / 525960,
}
_AGE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(year|month|week|day|hour|minute)s?\s*$", re.I)
ADULT: Final = 18.0


@dataclass(frozen=True)
class Age:
    years: float  # for comparing
    number: str  # as published: "18", "6"
    unit: str  # "year", "month"...

    def words(self) -> str:
        if self.unit == "year":
            return self.number
        plural = "" if self.number == "1" else "s"
        return f"{self.number} {self.unit}{plural}"


def parse_age(value: Any) -> Age | None:
    """ "18 Years" -> Age(18.0, "18", "year"); anything unreadable -> None (no limit)."""
    match = _AGE.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    number, unit = match.group(1), match.group(2).lower()
    years = float(number) * _UNITS[unit]
    return Age(years, number.removesuffix(".0"), unit) if math.isfinite(years) else None


@dataclass(frozen=True)
class Eligibility:
    minimum: Age | None
    maximum: Age | None
    sex: str | None  # "FEMALE" | "MALE"; None: all
    healthy_volunteers: bool | None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Eligibility:
        section = record.get("protocolSection")
        module = section.get("eligibilityModule") if isinstance(section, Mapping) else None
        module = module if isinstance(module, Mapping) else {}
        sex = module.get("sex")
        code = sex.strip().upper() if isinstance(sex, str) else None
        healthy = module.get("healthyVolunteers")
        return cls(
            minimum=parse_age(module.get("minimumAge")),
            maximum=parse_age(module.get("maximumAge")),
            sex=code if code in SEXES else None,
            healthy_volunteers=healthy if isinstance(healthy, bool) else None,
        )

    def accepts(self, age: int | None, sex: str | None) -> bool:
        """What matching decides in SQL (``alerts.matching``), for one person; None: not given."""
        if age is not None:
            if self.minimum is not None and not age + 1 > self.minimum.years:
                return False
            if self.maximum is not None and not age <= self.maximum.years:
                return False
        return not (sex is not None and self.sex is not None and sex != self.sex)

    def words(self) -> str:
        """ "Adults 18 to 75; all sexes", "Children up to 17; girls only", "People of any age; all sexes"."""
        low, high = self.minimum, self.maximum
        if low is not None and low.years >= ADULT:
            who = "Adults"
        elif high is not None and high.years < ADULT:
            who = "Children"
        else:
            who = "People"
        if low is not None and low.years > 0 and high is not None:
            ages = f"{low.words()} to {high.words()}"
        elif low is not None and low.years > 0:
            ages = f"{low.words()} and older"
        elif high is not None:
            ages = f"up to {high.words()}"
        else:
            ages = "of any age"
        sexes = {
            None: "all sexes",
            "FEMALE": {"Adults": "women only", "Children": "girls only"}.get(who, "females only"),
            "MALE": {"Adults": "men only", "Children": "boys only"}.get(who, "males only"),
        }[self.sex]
        return f"{who} {ages}; {sexes}"
