"""Shared renderings of an event's email: one per variant, made once, read by every batch that sends it.

A ``trial.changed`` email says the same to everyone: its one rendering is ``Event.content`` and its
deliveries have no variant. A new-trial email names the condition its recipient follows ("You follow:
herniated disc"), which is not the same for every recipient; and per-recipient substitutions cannot carry
it (they must be URL-safe and identical in text and HTML). So the event is rendered once per distinct
variant among its deliveries (``Delivery.variant``: the followed label, set by matching), and each
rendering is stored in ``event_contents``. premailer still runs once per (event, variant), never per
recipient. ``Event.content`` keeps the rendering of the most common variant, for readers of one rendering.

Readers with a place (``alerts.places``): their delivery's variant is the label plus their nearby-site
outcome ("\x1fkm;open:3:34;"). The email itself is still rendered once per label; what differs per outcome
(the "near you" changes and the nearest open site) is a pair of small fragments per slot, rendered once per
outcome and stored as an ``event_contents`` row whose variant is the outcome (it starts with "\x1f"; text and
html hold the fragments of every slot, joined by FRAGMENT_JOIN). Sending fills them in per recipient like
the links (``rendering.personalize``, SendGrid substitutions), so one request still carries a whole batch.
Readers without a place get the fragments of the bare outcome "\x1f".

Sending calls ``prepare`` with the variants of the deliveries it claimed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from alerts.models import Delivery, Event, EventContent
from alerts.places import OUTCOME_SEPARATOR
from alerts.rendering import SLOTS, Content
from alerts.transports.base import fill

FRAGMENT_JOIN = "\x1e"  # between the slots' fragments in one stored row (never in rendered text)
NO_PLACE = OUTCOME_SEPARATOR  # the outcome of readers without a place


def split(variant: str | None) -> tuple[str | None, str]:
    """A delivery variant -> (its label, None for the event's main rendering; its outcome key)."""
    if variant is None:
        return None, NO_PLACE
    label, separator, tail = variant.partition(OUTCOME_SEPARATOR)
    return label or None, OUTCOME_SEPARATOR + tail if separator else NO_PLACE


def pack(fragments: Mapping[str, tuple[str, str]], subject: str | None = None) -> Content:
    """One outcome's fragments (slot -> (text, html)), and its subject if it has its own, as a Content."""
    return Content(
        subject=subject or "",
        text=FRAGMENT_JOIN.join(fragments.get(n, ("", ""))[0] for n in SLOTS),
        html=FRAGMENT_JOIN.join(fragments.get(n, ("", ""))[1] for n in SLOTS),
    )


def unpack(content: Content | None) -> dict[str, str]:
    """Per-recipient values for ``rendering.personalize``: {"near_site_text": ..., "near_site_html": ...}."""
    texts = content.text.split(FRAGMENT_JOIN) if content is not None else []
    htmls = content.html.split(FRAGMENT_JOIN) if content is not None else []
    values = {}
    for index, name in enumerate(SLOTS):
        values[f"{name}_text"] = texts[index] if index < len(texts) else ""
        values[f"{name}_html"] = htmls[index] if index < len(htmls) else ""
    return values


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


def render_variants(
    session: Session,
    event: Event,
    render: Callable[[str | None], Content],
    after_id: int = 0,
    counts: Sequence[tuple[str | None, int]] | None = None,
    new_event: bool = False,
) -> int:
    """Render ``event`` once per label and once per outcome of its deliveries, and store each.

    ``render(label)`` makes one rendering (None: the event's shared one); ``render(outcome)`` (a string
    starting with "\x1f") makes that outcome's fragments (``pack``). The most common label's rendering
    also becomes ``Event.content``. With ``after_id`` (a later chunk of a fan-out), only what the
    deliveries after it need and nothing has yet is rendered. ``counts``: ``variant_counts`` of those
    deliveries, when the caller has them (the INSERT that made them reported them: alerts.matching.Chunk).
    ``new_event``: the event was created in this transaction (the intake), so it has no rendering yet.
    Returns the number of renderings.
    """
    labels: dict[str | None, int] = {}
    outcomes: set[str] = set()
    for variant, count in counts if counts is not None else variant_counts(session, event.id, after_id):
        label, outcome = split(variant)
        labels[label] = labels.get(label, 0) + count
        outcomes.add(outcome)
    ranked = sorted(labels.items(), key=lambda item: (-item[1], item[0] or ""))
    stored = select(EventContent.variant).where(EventContent.event_id == event.id)
    rendered: set[str | None] = set() if new_event else set(session.scalars(stored))
    made = 0
    for index, (label, _count) in enumerate(ranked):
        if (label is None and event.content is not None) or (label is not None and label in rendered):
            continue
        content = render(label)
        made += 1
        if label is not None:
            session.add(EventContent(event_id=event.id, variant=label, **content.as_dict()))
        if label is None or (index == 0 and event.content is None):
            event.content = content.as_dict()
    for outcome in sorted(outcomes - rendered):
        session.add(EventContent(event_id=event.id, variant=outcome, **render(outcome).as_dict()))
        made += 1
    return made


def fall_back_to_main(session: Session, event_id: int, after_id: int) -> None:
    """Deliveries after ``after_id`` whose variant has no rendering get the event's main one instead.

    For work that cannot render (a replay, a fan-out resumed by maintenance): a followed label that had no
    recipient when the event was rendered has no rendering of its own. The email is the same; only the
    "You follow" line names the event's most common label instead.
    """
    rendered = select(EventContent.variant).where(EventContent.event_id == event_id)
    session.execute(
        update(Delivery)
        .where(
            Delivery.event_id == event_id,
            Delivery.id > after_id,
            Delivery.variant.not_in(rendered),
            ~Delivery.variant.contains(OUTCOME_SEPARATOR),
        )
        .values(variant=None)
        .execution_options(synchronize_session=False)
    )
    # Readers with a place keep their outcome (its fragments fall back in ``prepare``): only the label goes.
    done = set(session.scalars(rendered))
    placed = session.scalars(
        select(Delivery.variant)
        .distinct()
        .where(Delivery.event_id == event_id, Delivery.id > after_id, Delivery.variant.contains(OUTCOME_SEPARATOR))
    )
    for variant in list(placed):
        label, outcome = split(variant)
        if label is not None and label not in done:
            session.execute(
                update(Delivery)
                .where(Delivery.event_id == event_id, Delivery.id > after_id, Delivery.variant == variant)
                .values(variant=outcome)
                .execution_options(synchronize_session=False)
            )


class Renderings:
    """Stored renderings already read, kept by one process (``Runtime.renderings``): they never change once
    written (``render_variants`` only adds; retention deletes whole events), and every batch of a fan-out
    asks for the same ones: a fan-out to placed readers names hundreds of nearby-site outcomes per batch.

    Bounded: the oldest entries go first. Only renderings found are kept, so one stored later is read then.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._kept: OrderedDict[tuple[int, str | None], Content] = OrderedDict()

    def get(self, event_id: int, variant: str | None) -> Content | None:
        return self._kept.get((event_id, variant))

    def keep(self, event_id: int, found: Mapping[str | None, Content]) -> None:
        for variant, content in found.items():
            self._kept[(event_id, variant)] = content
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)


def contents_for(
    session: Session, event_id: int, variants: Iterable[str | None], known: Renderings | None = None
) -> dict[str | None, Content]:
    """The rendering for each variant (None: ``Event.content``), in one or two queries (none for those
    ``known`` already holds).

    A variant with no stored rendering is absent from the result: the caller must not send it.
    """
    found: dict[str | None, Content] = {}
    wanted: set[str | None] = set()
    for variant in variants:
        held = known.get(event_id, variant) if known is not None else None
        if held is not None:
            found[variant] = held
        else:
            wanted.add(variant)
    read: dict[str | None, Content] = {}
    named = sorted(v for v in wanted if v is not None)
    if named:
        rows = session.execute(
            select(EventContent.variant, EventContent.subject, EventContent.text, EventContent.html).where(
                EventContent.event_id == event_id, EventContent.variant.in_(named)
            )
        )
        for variant, subject, text, html in rows:
            read[variant] = Content(subject=subject, text=text, html=html)
    if None in wanted:
        data: dict[str, Any] | None = session.scalar(select(Event.content).where(Event.id == event_id))
        if data is not None:
            read[None] = Content.from_dict(data)
    if known is not None:
        known.keep(event_id, read)
    return found | read


def content_for(session: Session, event_id: int, variant: str | None) -> Content | None:
    """The rendering to send to a delivery of ``event_id`` with ``variant``; None if there is none."""
    return contents_for(session, event_id, [variant]).get(variant)


@dataclass(frozen=True)
class Prepared:
    """What one variant's recipients are sent: the rendering (by ``key``) and their fragment values."""

    key: str | None  # the label whose rendering it is (None: Event.content)
    content: Content
    values: dict[str, str]
    subject: str | None = None  # the outcome's own subject (a change alert leading with a site near them)


def prepare(
    session: Session, event_id: int, variants: Iterable[str | None], known: Renderings | None = None
) -> dict[str | None, Prepared]:
    """For each variant: its label's rendering and its outcome's fragments, in one or two queries.

    An outcome without fragments (first met by a fan-out resumed without its record) gets those of
    readers without a place, or none. A variant whose label has no rendering is absent from the result:
    the caller must not send it (``fall_back_to_main`` moves such deliveries to the main rendering).
    """
    wanted = set(variants)
    parts = {variant: split(variant) for variant in wanted}
    needed = {label for label, _ in parts.values()} | {outcome for _, outcome in parts.values()} | {NO_PLACE}
    found = contents_for(session, event_id, needed, known)
    # Fragment values that are the same for every reader of a label in this batch (all of them for readers
    # without a place; the empty "changes near you" of most placed readers) go into the rendering once here,
    # instead of into each of up to 1,000 recipients' substitutions, which made every request larger and
    # slower to build and to read.
    values: dict[str | None, dict[str, str]] = {}
    subjects: dict[str | None, str | None] = {}
    by_label: dict[str | None, list[str | None]] = {}
    for variant, (label, outcome) in parts.items():
        if found.get(label) is None:
            continue
        fragments = found.get(outcome) or found.get(NO_PLACE)
        subjects[variant] = fragments.subject if fragments is not None and fragments.subject else None
        values[variant] = unpack(fragments)
        by_label.setdefault(label, []).append(variant)
    prepared: dict[str | None, Prepared] = {}
    for label, members in by_label.items():
        content = found[label]
        first = values[members[0]]
        common = {name: value for name, value in first.items() if all(values[v][name] == value for v in members)}
        if common:
            content = Content(*(fill(part, common) for part in (content.subject, content.text, content.html)))
        for variant in members:
            own = {name: value for name, value in values[variant].items() if name not in common}
            prepared[variant] = Prepared(label, content, own, subjects[variant])
    return prepared
