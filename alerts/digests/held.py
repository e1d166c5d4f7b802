"""Held items: matched events waiting for a subscriber's digest, and what their entries need.

Matching creates the rows (``alerts.matching.create_held_items``, the statement deliveries come from). In
the event's transaction, ``prepare`` then stores what a digest will need later, once per event:

* the entry's fragment, rendered and CSS-inlined once (``DigestFragment``, keyed by the news's dedupe key,
  so every subscriber holding it shares it) and, for new trials, the heading of each followed condition;
* for a change, both versions of the record by material fingerprint (``TrialVersion``): two changes to the
  same trial inside one window become one entry from the first "before" to the last "after"
  (``alerts.digests.assemble``), which needs the records at both ends.

Unsubscribing, erasure and suppression drop what is still held (``drop_*``); items already carried by a
sent digest stay as its history (what its one-click link ends) until erasure or retention removes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.orm import Session

from alerts import ctgov, emails
from alerts.models import Digest, DigestFragment, DigestStatus, HeldItem, Subscriber, TrialVersion, utcnow
from alerts.rendering import Renderer

CHANGED = "changed"
NEW = "new"
GROUP = "group"
STATIC = "static"
# A digest entry shows at most this many changes of a trial (most important first); the rest are counted
# ("and 3 more changes") and the entry links to the study record.
MAX_CHANGES_SHOWN = 2


def _insert_ignoring(session: Session, model: Any, keys: list[str]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` on both engines: two events (or workers) may render the same key."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model).on_conflict_do_nothing(index_elements=keys)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(model).on_conflict_do_nothing(index_elements=keys)


def group_key(label: str) -> str:
    # Labels are up to 300 characters; the key column takes 400.
    return f"{GROUP}:{label}"


def store_fragment(session: Session, key: str, kind: str, importance: int, title: str, text: str, html: str) -> None:
    row = {
        "key": key,
        "kind": kind,
        "importance": importance,
        "title": title,
        "text": text,
        "html": html,
        "created_at": utcnow(),
    }
    session.execute(_insert_ignoring(session, DigestFragment, ["key"]).values(row))


def missing(session: Session, keys: Iterable[str]) -> list[str]:
    wanted = sorted(set(keys))
    if not wanted:
        return []
    found = set(session.scalars(select(DigestFragment.key).where(DigestFragment.key.in_(wanted))))
    return [k for k in wanted if k not in found]


def store_versions(session: Session, nct_id: str, records: Iterable[Mapping[str, Any]]) -> None:
    rows = {ctgov.fingerprint(r): dict(r) for r in records}
    values = [{"nct_id": nct_id, "fingerprint": fp, "record": r, "created_at": utcnow()} for fp, r in rows.items()]
    if values:
        session.execute(_insert_ignoring(session, TrialVersion, ["nct_id", "fingerprint"]).values(values))


def change_key(nct_id: str, from_fp: str, to_fp: str) -> str:
    return f"{CHANGED}:{nct_id}:{from_fp}:{to_fp}"


def parse_change_key(key: str) -> tuple[str, str, str] | None:
    """(nct, from fingerprint, to fingerprint) of a change's dedupe key; None for other keys."""
    kind, _, rest = key.partition(":")
    parts = rest.split(":")
    if kind != CHANGED or len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def render_change(
    session: Session,
    renderer: Renderer,
    site: Mapping[str, Any],
    key: str,
    record: Mapping[str, Any],
    changes: Sequence[ctgov.Change],
) -> None:
    """The entry of one (possibly net) change; nothing material: an empty fragment (the entry is left out)."""
    if not changes:
        store_fragment(session, key, CHANGED, -1, ctgov.title(record), "", "")
        return
    context = emails.trial_changed(record, changes)
    shown = context["changes"][:MAX_CHANGES_SHOWN]
    extra = {"changes": shown, "more": len(context["changes"]) - len(shown)}
    text, html = renderer.inlined_fragment("digest/_changed", {**site, **context, **extra})
    importance = max(c.importance for c in changes)
    store_fragment(session, key, CHANGED, importance, ctgov.title(record), text, html)


def render_new(
    session: Session, renderer: Renderer, site: Mapping[str, Any], key: str, record: Mapping[str, Any]
) -> None:
    context = {"trial": emails.trial_context(record)}
    text, html = renderer.inlined_fragment("digest/_new", {**site, **context})
    status = ctgov.summarize(record).status_code
    # Studies one can join now come first in their group.
    importance = 1 if status in ("RECRUITING", "NOT_YET_RECRUITING") else 0
    store_fragment(session, key, NEW, importance, ctgov.title(record), text, html)


def render_group(session: Session, renderer: Renderer, site: Mapping[str, Any], label: str) -> None:
    text, html = renderer.inlined_fragment("digest/_group", {**site, "label": label})
    store_fragment(session, group_key(label), GROUP, 0, label, text, html)


def prepare(
    session: Session,
    renderer: Renderer,
    site: Mapping[str, Any],
    event_id: int,
    dedupe_key: str,
    record: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    changes: Sequence[ctgov.Change],
) -> None:
    """Everything the event's held items need in a digest, made once for all their subscribers."""
    if old is not None:
        store_versions(session, ctgov.nct_id(record), [old, record])
    if missing(session, [dedupe_key]):
        if old is not None:
            render_change(session, renderer, site, dedupe_key, record, changes)
        else:
            render_new(session, renderer, site, dedupe_key, record)
    labels = session.scalars(
        select(HeldItem.variant).where(HeldItem.event_id == event_id, HeldItem.variant.is_not(None)).distinct()
    )
    for label in missing(session, (group_key(v) for v in labels if v is not None)):
        render_group(session, renderer, site, label.removeprefix(f"{GROUP}:"))


# --- dropping what is held ----------------------------------------------------------------------------


def _not_carried() -> Any:
    """Items above their subscriber's watermark: not in any digest yet (alerts.digests.schedule)."""
    watermark = (
        select(case((HeldItem.weekly.is_(True), Subscriber.digest_weekly_upto), else_=Subscriber.digest_daily_upto))
        .where(Subscriber.id == HeldItem.subscriber_id)
        .scalar_subquery()
    )
    return HeldItem.id > watermark


def drop_for_subscriptions(session: Session, subscription_ids: Sequence[int]) -> None:
    """The subscription ended: what it still holds is never sent (sending also skips ended subscriptions,
    for items a closed window already carries)."""
    if subscription_ids:
        session.execute(
            delete(HeldItem)
            .where(HeldItem.subscription_id.in_(list(subscription_ids)), _not_carried())
            .execution_options(synchronize_session=False)
        )


def drop_for_subscriber(session: Session, subscriber_id: int, erase: bool = False) -> None:
    """Everything still held for the subscriber; with ``erase``, their digest history as well."""
    condition = HeldItem.subscriber_id == subscriber_id
    if not erase:
        condition = condition & _not_carried()
    session.execute(delete(HeldItem).where(condition).execution_options(synchronize_session=False))
    if erase:
        # Like deliveries, digests stay as counts without anyone behind them; unsent ones are not sent.
        session.execute(
            update(Digest)
            .where(Digest.subscriber_id == subscriber_id, Digest.status == DigestStatus.QUEUED.value)
            .values(status=DigestStatus.SKIPPED.value, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(Digest)
            .where(Digest.subscriber_id == subscriber_id)
            .values(subscriber_id=None)
            .execution_options(synchronize_session=False)
        )


def drop_for_addresses(session: Session, email_hashes: Sequence[str]) -> None:
    """Suppressed addresses: what their subscribers hold is dropped (their digests would be suppressed)."""
    if email_hashes:
        owners = select(Subscriber.id).where(Subscriber.email_hash.in_(list(email_hashes))).scalar_subquery()
        session.execute(
            delete(HeldItem)
            .where(HeldItem.subscriber_id.in_(owners), _not_carried())
            .execution_options(synchronize_session=False)
        )
