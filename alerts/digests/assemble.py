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

**Byte budget.** An email digest carries the most important entries (the order above) that fit a byte
budget (``Budget``, worked out by ``alerts.digests.send.budget``) that keeps its SendGrid substitutions under
10,000 bytes with a margin; when entries are left out it says "N more changes did not fit in this email"
with one link (``%%digest_url%%``) to the page of the whole digest (``alerts.digests.view``). The subject
still counts every change. A plan depends only on the items' shapes, so one plan serves every subscriber
whose digest has the same items (``Plan.bind`` adds their links).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from alerts.digests.held import CHANGED, NEW, change_key, group_key, parse_change_key
from alerts.models import SubscriptionStatus

STOP = "%%stop%%"
# The link to the whole digest (``/digest/<token>``) in an email that left entries out; per recipient.
DIGEST_URL = "%%digest_url%%"
CHANGED_PREFIX = f"{CHANGED}:"
NEW_PREFIX = f"{NEW}:"
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
    size: int = 0  # bytes of text and html as SendGrid counts them (JSON), for the budget
    # Worked out once per fragment, not per digest that shows it (a batch plans 1,000 digests from a few
    # hundred fragments): its place among entries, and whether it carries a stop link.
    order: tuple[int, str] = field(init=False, repr=False, compare=False)
    has_stop: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", (-self.importance, self.title.casefold()))
        object.__setattr__(self, "has_stop", STOP in self.html or STOP in self.text)


@dataclass
class Entry:
    key: str
    index: int  # the item (position in the digest's items) whose subscription and stop link the entry uses


# What an item contributes to a digest's shape: dedupe key, variant, shown (its subscription is active), weekly.
Shape = tuple[str, str | None, bool, bool]


def shape(item: Item) -> Shape:
    active = item.subscription_status == SubscriptionStatus.ACTIVE.value and item.unsubscribe_token is not None
    return (item.dedupe_key, item.variant, active, item.weekly)


@dataclass(slots=True)  # not frozen: made per recipient, and a frozen __init__ costs a setattr per field
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
    # Entries left out to keep the email within its byte budget (``Plan``); the email then says so and
    # links to the whole digest (``%%digest_url%%``).
    omitted: int = 0
    budgeted: bool = False  # planned within a Budget (alerts.digests.send packs it without measuring)


@dataclass(frozen=True)
class Plan:
    """A digest assembled from its items' shapes only: the same for every subscriber whose items have the
    same shapes, so a batch assembles each distinct digest once (``bind`` adds one subscriber's links)."""

    subject: str
    html: str
    text: str
    stops: tuple[tuple[str, int], ...]  # (stop_<n>, index of the item whose token it links)
    entries: int  # entries shown
    omitted: int
    key: tuple[str, ...]
    subscription_items: tuple[int, ...]  # indexes of the items whose subscriptions the entries show
    # Planned within a Budget: with links no longer than the budget assumed, it fits without measuring.
    budgeted: bool = False

    def bind(self, tokens: Sequence[str | None], subscription_ids: Sequence[int] | None = None) -> Assembled:
        """One subscriber's digest: its stop links' tokens (and, when given, the subscriptions it shows)."""
        shown = [subscription_ids[i] for i in self.subscription_items] if subscription_ids is not None else []
        return Assembled(
            subject=self.subject,
            html=self.html,
            text=self.text,
            stops={name: tokens[index] or "" for name, index in self.stops},
            entries=self.entries,
            key=self.key,
            subscription_ids=list(dict.fromkeys(shown)),
            omitted=self.omitted,
            budgeted=self.budgeted,
        )


@functools.lru_cache(maxsize=4096)
def _parsed_change(key: str) -> tuple[str, str, str] | None:
    # A batch's digests share a few hundred news keys among thousands of items.
    return parse_change_key(key)


Entries = tuple[list[Entry], dict[str, list[Entry]]]


def entries(shapes: Sequence[Shape]) -> tuple[list[Entry], dict[str, list[Entry]]]:
    """(change entries, new-trial entries by followed label) before fragments are known; merges changes."""
    changes: dict[str, list[tuple[str, str, int]]] = {}
    groups: dict[str, list[Entry]] = {}
    for index, (dedupe_key, variant, active, _weekly) in enumerate(shapes):
        if not active:
            continue
        if dedupe_key.startswith(CHANGED_PREFIX):
            parsed = _parsed_change(dedupe_key)
            if parsed is not None:
                nct, from_fp, to_fp = parsed
                changes.setdefault(nct, []).append((from_fp, to_fp, index))
        elif dedupe_key.startswith(NEW_PREFIX):
            groups.setdefault(variant or "", []).append(Entry(dedupe_key, index))
    merged: list[Entry] = []
    for nct, chain in changes.items():
        first_from, last_to, last = chain[0][0], chain[-1][1], chain[-1][2]
        if first_from == last_to:
            continue  # changed and changed back inside the window
        key = shapes[chain[0][2]][0] if len(chain) == 1 else change_key(nct, first_from, last_to)
        merged.append(Entry(key, last))
    return merged, groups


def needed_keys(change_entries: Sequence[Entry], groups: Mapping[str, Sequence[Entry]]) -> set[str]:
    keys = {e.key for e in change_entries} | {group_key(label) for label in groups}
    keys |= {e.key for group in groups.values() for e in group}
    return keys


@dataclass(frozen=True)
class Budget:
    """How many bytes a digest's own parts may take (SendGrid substitutions, counted as JSON like
    ``transports.sendgrid.json_bytes``), and what a stop link and the "N more changes" note add."""

    bytes: int
    stop_link_bytes: int  # one stop link written out (it replaces ``%%stop_<n>%%`` in both parts)
    more_bytes: int  # the note and its link to the whole digest, in both parts


def plan(
    shapes: Sequence[Shape],
    fragments: Mapping[str, Fragment],
    budget: Budget | None = None,
    found: Entries | None = None,
) -> Plan | None:
    """The digest's subject and body (with link placeholders), or None when nothing is left to say.

    With a ``budget``, entries are taken most important first while they fit (``Fragment.size``: a
    fragment's bytes in both parts); the first that does not fit and every later one are left out and
    counted in the note. ``found``: ``entries(shapes)`` when the caller has them already.
    """
    change_entries, groups = found if found is not None else entries(shapes)

    def order(e: Entry) -> tuple[int, str]:
        return fragments[e.key].order

    shown_changes = [e for e in change_entries if e.key in fragments and fragments[e.key].html]
    shown_changes.sort(key=order)
    shown_groups: list[tuple[str, list[Entry]]] = []
    for label, group in groups.items():
        kept = [e for e in group if e.key in fragments and fragments[e.key].html]
        if kept and group_key(label) in fragments:
            kept.sort(key=order)
            shown_groups.append((label, kept))
    # A group's most important entry is its first (sorted above).
    shown_groups.sort(key=lambda g: (-fragments[g[1][0].key].importance, g[0].casefold()))
    count_new = sum(len(g) for _, g in shown_groups)
    total = len(shown_changes) + count_new
    if not total:
        return None
    weekly = all(s[3] for s in shapes)
    cadence = "weekly" if weekly else "daily"
    html: list[str] = [fragments[INTRO[cadence]].html]
    text: list[str] = [fragments[INTRO[cadence]].text]
    stops: list[tuple[str, int]] = []
    key: list[str] = [cadence]
    subscription_items: list[int] = []
    left = budget.bytes - fragments[INTRO[cadence]].size if budget is not None else 0
    shown = 0
    full = False

    link = 2 * budget.stop_link_bytes if budget is not None else 0  # a stop link in both parts

    def fits(entry_key: str, entry_link: bool, heading_key: str | None, heading_link: bool) -> bool:
        """Whether the entry (and the heading it opens) fits, keeping room for the note; takes the room."""
        nonlocal left, full
        if budget is None:
            return True
        if full:
            return False
        # + 2 per fragment: the newline joining HTML parts (two bytes in JSON).
        cost = fragments[entry_key].size + 2 + (link if entry_link else 0)
        if heading_key is not None:
            cost += fragments[heading_key].size + 2 + (link if heading_link else 0)
        # The note is needed unless this is the last entry.
        if cost + (budget.more_bytes if shown + 1 < total else 0) > left:
            full = True
            return False
        left -= cost
        return True

    def add(fragment_key: str, index: int | None) -> None:
        fragment = fragments[fragment_key]
        part_html, part_text = fragment.html, fragment.text
        if index is not None and fragment.has_stop:
            name = f"stop_{len(stops) + 1}"
            stops.append((name, index))
            part_html = part_html.replace(STOP, f"%%{name}%%")
            part_text = part_text.replace(STOP, f"%%{name}%%")
        html.append(part_html)
        text.append(part_text)
        key.append(fragment_key)

    changes_heading = False
    for entry in shown_changes:
        # A change entry has its own stop link; the section heading none.
        if not fits(entry.key, True, None if changes_heading else CHANGES_SECTION, False):
            break
        if not changes_heading:
            add(CHANGES_SECTION, None)
            changes_heading = True
        add(entry.key, entry.index)
        subscription_items.append(entry.index)
        shown += 1
    for label, group in shown_groups:
        if full:
            break
        heading = False
        for entry in group:
            # New studies share their group heading's stop link.
            if not fits(entry.key, False, None if heading else group_key(label), True):
                break
            if not heading:
                add(group_key(label), group[0].index)
                heading = True
            add(entry.key, None)
            subscription_items.append(entry.index)
            shown += 1
    omitted = total - shown
    if omitted:
        note = f"{omitted} more change{'s' if omitted != 1 else ''}"
        html.append(
            f'<p><strong>{note}</strong> did not fit in this email. <a href="{DIGEST_URL}">See the whole digest</a></p>'
        )
        text.append(f"\n{note} did not fit in this email. See the whole digest: {DIGEST_URL}\n")
        key.append(f"more:{omitted}")
    return Plan(
        subject=subject_line(cadence, len(shown_changes), count_new),
        html="\n".join(html),
        text="".join(text),
        stops=tuple(stops),
        entries=shown,
        omitted=omitted,
        key=tuple(key),
        subscription_items=tuple(dict.fromkeys(subscription_items)),
        budgeted=budget is not None,
    )


def assemble(
    items: Sequence[Item], fragments: Mapping[str, Fragment], budget: Budget | None = None
) -> Assembled | None:
    """One subscriber's digest (``plan`` of their items' shapes, bound to their links)."""
    planned = plan([shape(i) for i in items], fragments, budget)
    if planned is None:
        return None
    return planned.bind([i.unsubscribe_token for i in items], [i.subscription_id for i in items])


def subject_line(cadence: str, changes: int, new: int) -> str:
    """No condition or study names: a subject shows on lock screens and in notifications."""
    parts = []
    if changes:
        parts.append(f"{changes} update{'s' if changes != 1 else ''} to studies you follow")
    if new:
        parts.append(f"{new} new stud{'ies' if new != 1 else 'y'}")
    return f"Your {cadence} digest: " + " and ".join(parts)
