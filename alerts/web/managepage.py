"""The manage page (``manage.html``) as it is shown from a link: one skeleton per page structure, filled per request.

``alerts.web.skeleton`` renders the template with slots for everything that is the subscriber's own (the
link's token, each alert's id, name and frequency, their city, age, digest time and zone); what decides the
page's structure is the ``Shape`` key: the site's name, each alert's status and whether it has a detail line,
how many alerts are on, how many summary lines, the chosen distance, unit, sex and "open sites only", and
whether the zone is an old name outside the menu. Almost every page a scanner fetches has one of a handful
of shapes. Nothing of a subscriber is kept between requests: each page is filled from what its request read.

Only the plain page goes this way (no notice, no form errors): the answers to the page's forms render
``manage.html`` through Jinja as before, and ``tests/web/test_managepage.py`` checks both give the same bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alerts.web import pages
from alerts.web.skeleton import Skeleton, Slot, skeleton

TEMPLATE = "manage.html"


@dataclass(frozen=True)
class _ItemShape:
    status: str
    status_label: str
    has_detail: bool


@dataclass(frozen=True)
class Shape:
    site_name: str
    items: tuple[_ItemShape, ...]
    active_count: int
    summary_lines: int
    distances: tuple[tuple[str, str], ...]
    distance: str
    recruiting_sites_only: bool
    sex: str
    frequency: str
    has_other_zone: bool
    # The digest menus' (value, label) lists are the same objects on every page (module constants): compared by
    # identity (hashing the ~420 zones on every request would cost more than filling the page). ``menus`` keeps
    # them alive as long as the skeleton keyed by their ids, so an id cannot be reused for another list meanwhile.
    menu_ids: tuple[int, ...]
    menus: tuple[Sequence[Any], ...] = field(compare=False, hash=False)


_MENUS = ("frequencies", "hours", "weekdays", "time_zones")


def shape(context: Mapping[str, Any]) -> Shape:
    chosen, digest = context["chosen"], context["digest"]
    menus = tuple(digest[name] for name in _MENUS)
    return Shape(
        site_name=context["site_name"],
        items=tuple(_ItemShape(i.status, i.status_label, bool(i.detail)) for i in context["items"]),
        active_count=context["active_count"],
        summary_lines=len(context["summary"]),
        distances=tuple(context["distances"]),
        distance=chosen["distance"],
        recruiting_sites_only=chosen["recruiting_sites_only"],
        sex=chosen["sex"],
        frequency=digest["frequency"],
        has_other_zone=bool(digest["time_zone_other"]),
        menu_ids=tuple(map(id, menus)),
        menus=menus,
    )


def values(context: Mapping[str, Any]) -> dict[str, Any]:
    """The page's own values, by the slot keys ``_slotted`` gives them."""
    chosen, digest, frequencies = context["chosen"], context["digest"], context["frequencies"]
    found = {
        "base_action": context["base_action"],
        "digest_when": context["digest_when"],
        "city": chosen["city"],
        "city_id": chosen["city_id"],
        "age": chosen["age"],
        "hour": digest["hour"],
        "weekday": digest["weekday"],
        "time_zone": digest["time_zone"],
        "time_zone_other": digest["time_zone_other"],
    }
    for n, item in enumerate(context["items"]):
        found |= {
            f"item{n}.id": item.id,
            f"item{n}.name": item.name,
            f"item{n}.in_sentence": item.in_sentence,
            f"item{n}.detail": item.detail,
            f"item{n}.frequency": frequencies.get(item.id),
        }
    for n, line in enumerate(context["summary"]):
        found[f"summary{n}"] = line
    return found


@dataclass(frozen=True)
class _SlotItem:
    """``alerts.web.links.Item`` with slots for its values (the template reads the same attributes)."""

    id: Slot
    name: Slot
    in_sentence: Slot
    detail: Slot | None
    status: str
    status_label: str


def _slotted(page: Shape, slots: list[Slot]) -> dict[str, Any]:
    """A context for ``manage.html`` with the page's structure real and its own values as slots."""

    def slot(key: str, present: bool | None = None) -> Slot:
        return Slot(slots, key, truth=present)

    items, frequencies = [], {}
    for n, item in enumerate(page.items):
        detail = slot(f"item{n}.detail", present=True) if item.has_detail else None
        ids = slot(f"item{n}.id")
        name, in_sentence = slot(f"item{n}.name"), slot(f"item{n}.in_sentence")
        items.append(_SlotItem(ids, name, in_sentence, detail, item.status, item.status_label))
        frequencies[ids] = slot(f"item{n}.frequency")
    frequency_menu, hour_menu, weekday_menu, zone_menu = page.menus
    return {
        "site_name": page.site_name,
        "items": items,
        "active_count": page.active_count,
        "base_action": slot("base_action"),
        "notice": None,
        "erase_error": None,
        "errors": {},
        "summary": [slot(f"summary{n}") for n in range(page.summary_lines)],
        "digest_error": None,
        "frequencies": frequencies,
        "digest_when": slot("digest_when"),
        "digest": {
            "frequencies": frequency_menu,
            "frequency": page.frequency,
            "hours": hour_menu,
            "hour": slot("hour"),
            "weekdays": weekday_menu,
            "weekday": slot("weekday"),
            "time_zones": zone_menu,
            "time_zone": slot("time_zone"),
            "time_zone_other": slot("time_zone_other", present=True) if page.has_other_zone else None,
        },
        "distances": list(page.distances),
        "chosen": {
            "city": slot("city"),
            "city_id": slot("city_id"),
            "distance": page.distance,
            "recruiting_sites_only": page.recruiting_sites_only,
            "age": slot("age"),
            "sex": page.sex,
        },
    }


@functools.lru_cache(maxsize=256)
def _skeleton(page: Shape) -> Skeleton:
    template = pages.templates.env.get_template(TEMPLATE)
    return skeleton(lambda slots: template.render(_slotted(page, slots)))


def body(context: Mapping[str, Any]) -> bytes:
    """``manage.html`` rendered with ``context`` (a plain page: no notice, no errors), as one bytes body."""
    return _skeleton(shape(context)).fill(values(context))
