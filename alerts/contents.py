"""Shared renderings of an event's email: one per variant, made once, read by every batch that sends it.

A ``trial.changed`` email says the same to everyone: its one rendering is ``Event.content`` and its
deliveries have no variant. A new-trial email names the condition its recipient follows ("You follow:
herniated disc"), which is not the same for every recipient; and per-recipient substitutions cannot carry
it (they must be URL-safe and identical in text and HTML). So the event is rendered once per distinct
variant among its deliveries (``Delivery.variant``: the followed label, set by matching), and each
rendering is stored in ``event_contents``. premailer still runs once per (event, variant), never per
recipient. ``Event.content`` keeps the rendering of the most common variant, for readers of one rendering.

Sending calls ``contents_for`` with the variants of the deliveries it claimed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from alerts.models import Delivery, Event, EventContent
from alerts.rendering import Content


def variant_counts(session: Session, event_id: int, after_id: int = 0) -> list[tuple[str | None, int]]:
    """The event's distinct delivery variants (of deliveries after ``after_id``), most recipients first."""
    counted = func.count().label("n")
    rows = session.execute(
        select(Delivery.variant, counted)
        .where(Delivery.event_id == event_id, Delivery.id > after_id)
        .group_by(Delivery.variant)
        .order_by(counted.desc(), Delivery.variant)
    )
    return [(variant, int(n)) for variant, n in rows]


def render_variants(session: Session, event: Event, render: Callable[[str | None], Content], after_id: int = 0) -> int:
    """Render ``event`` once per variant of its deliveries and store each. Returns the number rendered.

    ``render(variant)`` makes one rendering (None: the event's shared one). The first (most common)
    variant's rendering also becomes ``Event.content``. With ``after_id`` (a later chunk of a fan-out),
    only variants of the deliveries after it that have no rendering yet are rendered.
    """
    variants = variant_counts(session, event.id, after_id)
    if after_id:
        rendered = set(session.scalars(select(EventContent.variant).where(EventContent.event_id == event.id)))
        variants = [(v, n) for v, n in variants if (event.content is None if v is None else v not in rendered)]
    for index, (variant, _count) in enumerate(variants):
        content = render(variant)
        if variant is not None:
            session.add(EventContent(event_id=event.id, variant=variant, **content.as_dict()))
        if variant is None or (index == 0 and event.content is None):
            event.content = content.as_dict()
    return len(variants)


def fall_back_to_main(session: Session, event_id: int, after_id: int) -> None:
    """Deliveries after ``after_id`` whose variant has no rendering get the event's main one instead.

    For work that cannot render (a replay, a fan-out resumed by maintenance): a followed label that had no
    recipient when the event was rendered has no rendering of its own. The email is the same; only the
    "You follow" line names the event's most common label instead.
    """
    rendered = select(EventContent.variant).where(EventContent.event_id == event_id)
    session.execute(
        update(Delivery)
        .where(Delivery.event_id == event_id, Delivery.id > after_id, Delivery.variant.not_in(rendered))
        .values(variant=None)
        .execution_options(synchronize_session=False)
    )


def contents_for(session: Session, event_id: int, variants: Iterable[str | None]) -> dict[str | None, Content]:
    """The rendering for each variant (None: ``Event.content``), in one or two queries.

    A variant with no stored rendering is absent from the result: the caller must not send it.
    """
    wanted = set(variants)
    found: dict[str | None, Content] = {}
    named = sorted(v for v in wanted if v is not None)
    if named:
        rows = session.execute(
            select(EventContent.variant, EventContent.subject, EventContent.text, EventContent.html).where(
                EventContent.event_id == event_id, EventContent.variant.in_(named)
            )
        )
        for variant, subject, text, html in rows:
            found[variant] = Content(subject=subject, text=text, html=html)
    if None in wanted:
        data: dict[str, Any] | None = session.scalar(select(Event.content).where(Event.id == event_id))
        if data is not None:
            found[None] = Content.from_dict(data)
    return found


def content_for(session: Session, event_id: int, variant: str | None) -> Content | None:
    """The rendering to send to a delivery of ``event_id`` with ``variant``; None if there is none."""
    return contents_for(session, event_id, [variant]).get(variant)
