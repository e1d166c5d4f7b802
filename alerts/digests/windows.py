"""When digest windows close, in the subscriber's own time zone (pure functions, no I/O).

A window closes at the subscriber's local hour (``hour``:00) on every local day (daily) or on their weekday
(weekly). Each local date has exactly one close, so a daylight-saving change can neither skip nor double a
day:

* On a spring-forward day the local hour may not exist (02:00 in America/New_York on 8 March 2026). The
  wall-clock time is read with the offset in force before the change (PEP 495, fold=0), which lands an
  hour later on the new clock (03:00): the day keeps its digest, late by the length of the gap.
* On a fall-back day the local hour may happen twice (01:00 in America/New_York on 1 November 2026). The
  first one is used (fold=0): one close.

Closes are strictly increasing from one local date to the next (days are 23-25 hours apart and a gap shifts
a close by at most its length), which ``next_close`` relies on.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

DAILY = "daily"
WEEKLY = "weekly"


def close_on(zone: ZoneInfo, day: date, hour: int) -> datetime:
    """The UTC instant of ``hour``:00 local time on local date ``day`` (see the module docstring for gaps)."""
    return datetime(day.year, day.month, day.day, hour, tzinfo=zone).astimezone(UTC)


def _days(cadence: str | None) -> int:
    return 7 if cadence == WEEKLY else 1


def _is_window_day(day: date, cadence: str | None, weekday: int) -> bool:
    return cadence != WEEKLY or day.weekday() == weekday


def latest_close(now: datetime, zone: ZoneInfo, hour: int, weekday: int, cadence: str | None) -> datetime:
    """The most recent window close at or before ``now``: the window a (possibly late) tick closes.

    A tick that runs late (workers were down for hours or days) closes only the latest window, so the
    subscriber gets one late digest with everything held, not one per missed window.
    """
    local_day = now.astimezone(zone).date()
    for back in range(_days(cadence) + 2):
        day = local_day - timedelta(days=back)
        if _is_window_day(day, cadence, weekday):
            close = close_on(zone, day, hour)
            if close <= now:
                return close
    raise AssertionError("a window closes at least once a week")  # pragma: no cover


def next_close(after: datetime, zone: ZoneInfo, hour: int, weekday: int, cadence: str | None) -> datetime:
    """The first window close strictly after ``after``."""
    # From the day before: the close of the local date of ``after`` may be earlier or later than it.
    local_day = after.astimezone(zone).date() - timedelta(days=1)
    for ahead in range(_days(cadence) + 3):
        day = local_day + timedelta(days=ahead)
        if _is_window_day(day, cadence, weekday):
            close = close_on(zone, day, hour)
            if close > after:
                return close
    raise AssertionError("a window closes at least once a week")  # pragma: no cover


def local_weekday(instant: datetime, zone: ZoneInfo) -> int:
    """The local weekday (0 = Monday) of an instant: weekly items go out on the window of that day."""
    return instant.astimezone(zone).weekday()
