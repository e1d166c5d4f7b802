"""The page menus joined once per process (alerts.web.pages.options / choices) write what a template loop would."""

from __future__ import annotations

from markupsafe import escape

from alerts.digests.preferences import form_context, time_zones
from alerts.web.pages import choices, options


def _loop_options(values: tuple[str, ...], selected: str) -> str:
    return "".join(f"<option{' selected' if v == selected else ''}>{escape(v)}</option>" for v in values)


def _loop_choices(pairs: list[tuple[object, str]], selected: object) -> str:
    return "".join(
        f'<option value="{escape(v)}"{" selected" if v == selected else ""}>{escape(label)}</option>'
        for v, label in pairs
    )


def test_every_time_zone_marked_as_a_loop_would() -> None:
    zones = time_zones()
    for zone in (*zones, "Not/A_Zone", ""):
        assert str(options(zones, zone)) == _loop_options(zones, zone)


def test_values_that_need_escaping_and_repeats() -> None:
    values = ("a&b", "<x>", 'say "hi"', "a&b")
    for selected in values:
        # Only the first of a repeated value is marked (as a single replace marked it).
        html = str(options(values, selected))
        assert html.count(" selected") == 1
        assert html.startswith(_loop_options(values[:1], selected)) or selected != values[0]
    assert str(options(values, "<x>")) == _loop_options(values[:3], "<x>") + "<option>a&amp;b</option>"


def test_hour_weekday_and_frequency_menus_marked_as_a_loop_would() -> None:
    digest = form_context()["digest"]
    assert isinstance(digest, dict)
    for name in ("hours", "weekdays", "frequencies"):
        pairs = list(digest[name])
        for value, _ in [*pairs, (None, ""), ("99", "")]:
            assert str(choices(pairs, value)) == _loop_choices(pairs, value)
