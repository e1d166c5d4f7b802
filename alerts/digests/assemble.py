"""A digest's entries and email, assembled per subscriber from fragments rendered once.

What a digest carries (its held items) becomes entries:

* Changes to one trial: one entry however many changes the window held. Several are merged into the net
  change, from the first item's "before" version to the last item's "after" version (in the order the
  service received them): fragment ``changed:<nct>:<first from>:<last to>``. Back where it started (same
  fingerprint), or nothing material between the two versions (an empty fragment): no entry.
* New trials: one entry each, grouped under the condition the subscriber follows ("New studies for
  <label>"), with the group's stop link.
* Items of a subscription that ended since they were held are not shown.

Order: changes to followed studies first (the subscriber asked about those very studies), most important
first (``ctgov`` importance of their top change); then each followed condition's new studies, the group
with a recruiting study first, recruiting studies first within a group. Per-recipient links stay
placeholders (``%%stop_<n>%%``, ``%%unsubscribe_url%%``, ``%%manage_url%%``), so subscribers whose digests
are the same entries share one assembled body (``Assembled.key``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from alerts.digests.held import NEW, change_key, group_key, parse_change_key
from alerts.models import SubscriptionStatus

STOP = "%%stop%%"
INTRO = {"daily": "static:intro:daily", "weekly": "static:intro:weekly"}
CHANGES_SECTION = "static:section:changed"


@dataclass(frozen=True)
class Item:
    """One held item of a digest, as sending reads it."""

    dedupe_key: str
    variant: str | None
    subscription_id: int
    subscription_status: str | None
    weekly: bool  # held for a weekly subscription
    unsubscribe_token: str | None


@dataclass(frozen=True)
class Fragment:
    kind: str
    importance: int
    title: str
    text: str
    html: str


@dataclass
class Entry:
    key: str
    subscription_id: int
    token: str


@dataclass(frozen=True)
class Assembled:
    subject: str
    html: str
    text: str
    # stop_<n> -> the stop link's token (its subscription's unsubscribe token), in order of appearance.
    stops: dict[str, str]
    entries: int
    # The same for every subscriber whose digest has the same entries in the same order: they can share
    # one rendering of the body (only the links differ).
    key: tuple[str, ...]
    subscription_ids: list[int] = field(default_factory=list)


def entries(items: Sequence[Item]) -> tuple[list[Entry], dict[str, list[Entry]]]:
    """(change entries, new-trial entries by followed label) before fragments are known; merges changes."""
    active = SubscriptionStatus.ACTIVE.value
    changes: dict[str, list[tuple[str, str, Item]]] = {}
    groups: dict[str, list[Entry]] = {}
    for item in items:
        if item.subscription_status != active or item.unsubscribe_token is None:
            continue
        parsed = parse_change_key(item.dedupe_key)
        if parsed is not None:
            nct, from_fp, to_fp = parsed
            changes.setdefault(nct, []).append((from_fp, to_fp, item))
        elif item.dedupe_key.startswith(f"{NEW}:"):
            label = item.variant or ""
            groups.setdefault(label, []).append(Entry(item.dedupe_key, item.subscription_id, item.unsubscribe_token))
    merged: list[Entry] = []
    for nct, chain in changes.items():
        first_from, last_to, last = chain[0][0], chain[-1][1], chain[-1][2]
        if first_from == last_to:
            continue  # changed and changed back inside the window
        key = chain[0][2].dedupe_key if len(chain) == 1 else change_key(nct, first_from, last_to)
        merged.append(Entry(key, last.subscription_id, last.unsubscribe_token or ""))
    return merged, groups


def needed_keys(change_entries: Sequence[Entry], groups: Mapping[str, Sequence[Entry]]) -> set[str]:
    keys = {e.key for e in change_entries} | {group_key(label) for label in groups}
    keys |= {e.key for group in groups.values() for e in group}
    return keys


def assemble(
    items: Sequence[Item],
    fragments: Mapping[str, Fragment],
    stop_url: Callable[[str], str] | None = None,
) -> Assembled | None:
    """The digest's subject and body (with link placeholders), or None when nothing is left to say."""
    change_entries, groups = entries(items)
    shown_changes = [e for e in change_entries if e.key in fragments and fragments[e.key].html]
    shown_changes.sort(key=lambda e: (-fragments[e.key].importance, fragments[e.key].title.casefold()))
    shown_groups: list[tuple[str, list[Entry]]] = []
    for label, group in groups.items():
        kept = [e for e in group if e.key in fragments and fragments[e.key].html]
        if kept and group_key(label) in fragments:
            kept.sort(key=lambda e: (-fragments[e.key].importance, fragments[e.key].title.casefold()))
            shown_groups.append((label, kept))
    shown_groups.sort(key=lambda g: (-max(fragments[e.key].importance for e in g[1]), g[0].casefold()))
    count_new = sum(len(g) for _, g in shown_groups)
    if not shown_changes and not count_new:
        return None
    weekly = all(i.weekly for i in items)
    cadence = "weekly" if weekly else "daily"
    html: list[str] = [fragments[INTRO[cadence]].html]
    text: list[str] = [fragments[INTRO[cadence]].text]
    stops: dict[str, str] = {}
    key: list[str] = [cadence]
    subscription_ids: list[int] = []

    def add(fragment_key: str, entry: Entry | None) -> None:
        fragment = fragments[fragment_key]
        part_html, part_text = fragment.html, fragment.text
        if entry is not None and STOP in part_html + part_text:
            name = f"stop_{len(stops) + 1}"
            stops[name] = entry.token
            part_html = part_html.replace(STOP, f"%%{name}%%")
            part_text = part_text.replace(STOP, f"%%{name}%%")
        html.append(part_html)
        text.append(part_text)
        key.append(fragment_key)

    if shown_changes:
        add(CHANGES_SECTION, None)
        for entry in shown_changes:
            add(entry.key, entry)
            subscription_ids.append(entry.subscription_id)
    for label, group in shown_groups:
        add(group_key(label), group[0])
        for entry in group:
            add(entry.key, None)
        subscription_ids.extend(dict.fromkeys(e.subscription_id for e in group))
    return Assembled(
        subject=subject_line(cadence, len(shown_changes), count_new),
        html="\n".join(html),
        text="".join(text),
        stops=stops,
        entries=len(shown_changes) + count_new,
        key=tuple(key),
        subscription_ids=list(dict.fromkeys(subscription_ids)),
    )


def subject_line(cadence: str, changes: int, new: int) -> str:
    """No condition or study names: a subject shows on lock screens and in notifications."""
    parts = []
    if changes:
        parts.append(f"{changes} update{'s' if changes != 1 else ''} to studies you follow")
    if new:
        parts.append(f"{new} new stud{'ies' if new != 1 else 'y'}")
    return f"Your {cadence} digest: " + " and ".join(parts)
