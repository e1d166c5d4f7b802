"""Skeletons (alerts.web.skeleton): a template rendered once with slots, then filled, writes what Jinja writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from jinja2 import Environment, StrictUndefined
from markupsafe import Markup, escape

from alerts.web.pages import choices, options
from alerts.web.skeleton import Slot, escaped, skeleton

ENV = Environment(autoescape=True, undefined=StrictUndefined)
ENV.filters["choices"] = choices
ENV.filters["options"] = options

TRICKY = ["", "plain", "a&b", "<script>", "'single'", '"double"', "&amp; already", "ünïcødé – ok", "\ue000 0 \ue001"]


@pytest.mark.parametrize("value", [*TRICKY, 0, 42, -7, None, 3.5, True, Markup("<b>kept</b>")])
def test_escaped_is_what_autoescaping_prints(value: Any) -> None:
    assert escaped(value) == str(escape(value)).encode()
    assert escaped(value) == ENV.from_string("{{ v }}").render(v=value).encode()


def _filled(source: str, real: dict[str, Any], slotted: Callable[[list[Slot]], dict[str, Any]] | None = None) -> bytes:
    """``source`` rendered with a slot for every value of ``real`` (or what ``slotted`` builds), then filled."""
    template = ENV.from_string(source)

    def render(slots: list[Slot]) -> str:
        context = slotted(slots) if slotted is not None else {key: Slot(slots, key) for key in real}
        return template.render(context)

    return skeleton(render).fill(real)


def test_filled_page_equals_the_render_with_real_values() -> None:
    source = '<a href="{{ action }}/x" title="{{ name }}">{{ name }}</a>{{ action }}–{{ number }}'
    for name in TRICKY:
        real = {"action": "/manage/tok.en_1", "name": name, "number": 17}
        assert _filled(source, real) == ENV.from_string(source).render(real).encode()


def test_each_slot_is_escaped_once_however_often_printed() -> None:
    calls: list[object] = []

    def counting(value: object) -> bytes:
        calls.append(value)
        return escaped(value)

    page = skeleton(lambda slots: ENV.from_string("{{ a }}{{ a }}-{{ a }}").render(a=Slot(slots, "a", counting)))
    assert page.fill({"a": "<x>"}) == b"&lt;x&gt;&lt;x&gt;-&lt;x&gt;"
    assert calls == ["<x>"]


@pytest.mark.parametrize(
    "source",
    [
        "{% if a %}yes{% endif %}",  # the structure would depend on the value
        "{{ a[1:] }}",
        "{{ a | length }}",
        "{% if a == 'x' %}yes{% endif %}",
        "{{ a | lower }}",
        "{{ a | replace('x', 'y') }}",
    ],
)
def test_a_template_that_does_more_than_print_a_slot_is_refused(source: str) -> None:
    with pytest.raises(TypeError, match="slot 'a'"):
        _filled(source, {"a": "x"})


def test_a_slot_made_with_its_truth_may_be_tested() -> None:
    source = "{% if a %}<i>{{ a }}</i>{% endif %}."

    def slotted(slots: list[Slot]) -> dict[str, Any]:
        return {"a": Slot(slots, "a", truth=True)}

    assert _filled(source, {"a": "x&y"}, slotted) == b"<i>x&amp;y</i>."


def test_a_marker_the_template_changed_is_refused() -> None:
    with pytest.raises(ValueError, match="marker"):
        skeleton(lambda slots: str.__str__(Slot(slots, "a"))[:-1] + "!")


def test_menus_defer_to_the_real_choice() -> None:
    pairs = ((0, "Monday"), (1, "Tues<day>"), (2, "Wednesday"))
    zones = ("UTC", "Europe/Amsterdam", "Asia/Kolkata")
    source = "<select>{{ pairs | choices(day) }}</select><select>{{ zones | options(zone) }}</select>"
    for day in (0, 1, 2, None, 9):
        for zone in (*zones, "Asia/Calcutta"):
            real = {"day": day, "zone": zone}
            expected = ENV.from_string(source).render(pairs=pairs, zones=zones, **real).encode()

            def slotted(slots: list[Slot]) -> dict[str, Any]:
                return {"pairs": pairs, "zones": zones, "day": Slot(slots, "day"), "zone": Slot(slots, "zone")}

            assert _filled(source, real, slotted) == expected
