"""Digest windows in real time zones: local hours, daylight-saving changes, far-east and half-hour offsets."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from alerts.digests.windows import DAILY, WEEKLY, close_on, latest_close, local_weekday, next_close

NEW_YORK = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")
KIRITIMATI = ZoneInfo("Pacific/Kiritimati")
ST_JOHNS = ZoneInfo("America/St_Johns")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_shanghai_eight_in_the_morning_is_midnight_utc() -> None:
    assert close_on(SHANGHAI, date(2026, 11, 28), 8) == utc(2026, 11, 28, 0)
    assert latest_close(utc(2026, 11, 28, 0, 30), SHANGHAI, 8, 0, DAILY) == utc(2026, 11, 28, 0)
    # A minute before the close, the latest close is the day before's.
    assert latest_close(utc(2026, 11, 27, 23, 59), SHANGHAI, 8, 0, DAILY) == utc(2026, 11, 27, 0)
    assert next_close(utc(2026, 11, 28, 0), SHANGHAI, 8, 0, DAILY) == utc(2026, 11, 29, 0)


def test_kiritimati_is_a_day_ahead_of_utc() -> None:
    # UTC+14: 08:00 on Sunday 29 November is 18:00 UTC on Saturday the 28th.
    assert close_on(KIRITIMATI, date(2026, 11, 29), 8) == utc(2026, 11, 28, 18)
    # Weekly on Mondays: the local Monday, which is still Sunday in UTC.
    monday = next_close(utc(2026, 11, 28, 12), KIRITIMATI, 8, 0, WEEKLY)
    assert monday == utc(2026, 11, 29, 18)
    assert monday.astimezone(KIRITIMATI).weekday() == 0 and monday.weekday() == 6
    assert local_weekday(monday, KIRITIMATI) == 0


def test_st_johns_half_hour_offset_in_winter_and_summer() -> None:
    assert close_on(ST_JOHNS, date(2026, 11, 28), 8) == utc(2026, 11, 28, 11, 30)  # NST, UTC-3:30
    assert close_on(ST_JOHNS, date(2026, 7, 1), 8) == utc(2026, 7, 1, 10, 30)  # NDT, UTC-2:30
    assert latest_close(utc(2026, 11, 28, 11, 29), ST_JOHNS, 8, 0, DAILY) == utc(2026, 11, 27, 11, 30)
    assert latest_close(utc(2026, 11, 28, 11, 30), ST_JOHNS, 8, 0, DAILY) == utc(2026, 11, 28, 11, 30)


def test_new_york_spring_forward_keeps_the_day_of_a_missing_hour() -> None:
    # 8 March 2026: 02:00 EST jumps to 03:00 EDT, so 02:00 does not exist that day.
    closes = [close_on(NEW_YORK, date(2026, 3, d), 2) for d in (7, 8, 9)]
    assert closes == [utc(2026, 3, 7, 7), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6)]
    # The missing 02:00 is read on the old clock: 03:00 EDT on the new one, still 8 March.
    assert closes[1].astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M %Z") == "2026-03-08 03:00 EDT"
    # 08:00 moves from 13:00 to 12:00 UTC across the change.
    assert close_on(NEW_YORK, date(2026, 3, 7), 8) == utc(2026, 3, 7, 13)
    assert close_on(NEW_YORK, date(2026, 3, 8), 8) == utc(2026, 3, 8, 12)


def test_new_york_fall_back_sends_a_repeated_hour_once() -> None:
    # 1 November 2026: 02:00 EDT falls back to 01:00 EST, so 01:00 happens twice.
    first = close_on(NEW_YORK, date(2026, 11, 1), 1)
    assert first == utc(2026, 11, 1, 5)  # 01:00 EDT, the first of the two
    after = next_close(first, NEW_YORK, 1, 0, DAILY)
    assert after == utc(2026, 11, 2, 6)  # 01:00 EST the next day, not the second 01:00 of the same day
    # A tick during the repeated hour (01:30 EST) closes the same window, not a new one.
    assert latest_close(utc(2026, 11, 1, 6, 30), NEW_YORK, 1, 0, DAILY) == first


@pytest.mark.parametrize("zone_name", ["America/New_York", "Asia/Shanghai", "Pacific/Kiritimati", "America/St_Johns"])
@pytest.mark.parametrize("hour", [0, 1, 2, 3, 8, 23])
def test_a_year_of_daily_windows_has_one_close_per_local_day(zone_name: str, hour: int) -> None:
    """Walking next_close through 2026 (both DST changes) meets every local date exactly once."""
    place = ZoneInfo(zone_name)
    moment = utc(2025, 12, 31)
    days = []
    while moment < utc(2027, 1, 1):
        moment = next_close(moment, place, hour, 0, DAILY)
        days.append(moment.astimezone(place).date())
    assert days == sorted(set(days)), "no day twice"
    assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(days)), "no day skipped"


@pytest.mark.parametrize("zone_name", ["America/New_York", "Pacific/Kiritimati", "America/St_Johns"])
def test_weekly_windows_fall_on_the_local_weekday_every_week(zone_name: str) -> None:
    place = ZoneInfo(zone_name)
    moment = utc(2026, 1, 1)
    closes = []
    for _ in range(60):
        moment = next_close(moment, place, 8, 4, WEEKLY)  # Fridays
        closes.append(moment)
    assert all(c.astimezone(place).weekday() == 4 and c.astimezone(place).hour in (8, 9) for c in closes)
    local_days = [c.astimezone(place).date() for c in closes]
    assert all(b - a == timedelta(days=7) for a, b in itertools.pairwise(local_days))


def test_a_late_tick_closes_only_the_latest_window() -> None:
    # Workers were down for two and a half days: one window (the latest), not three.
    now = utc(2026, 11, 30, 12)
    assert latest_close(now, SHANGHAI, 8, 0, DAILY) == utc(2026, 11, 30, 0)
    assert latest_close(now, SHANGHAI, 8, 2, WEEKLY) == utc(2026, 11, 25, 0)  # last Wednesday


def test_a_digest_choice_survives_a_queue() -> None:
    """A sign-up recorded now and applied by a worker later carries the choice as JSON, validated again."""
    from alerts.digests.preferences import DigestChoice, InvalidPreference

    choice = DigestChoice.parse("weekly", "America/St_Johns", "07:00", "Friday")
    again = DigestChoice.from_json(choice.as_json())
    assert again == choice and again.preferences is not None and again.preferences.weekday == 4
    assert DigestChoice.from_json(DigestChoice().as_json()) == DigestChoice()
    with pytest.raises(InvalidPreference):
        DigestChoice.from_json({"frequency": "hourly"})
