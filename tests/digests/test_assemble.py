"""A digest's byte budget (alerts.digests.assemble.plan): the most important entries that fit, then a note.

Pure: fragments are made here, sizes counted as SendGrid counts them (alerts.transports.sendgrid).
"""

from __future__ import annotations

from alerts.digests.assemble import CHANGES_SECTION, DIGEST_URL, INTRO, Budget, Fragment, Item, assemble, plan, shape
from alerts.digests.held import change_key, group_key
from alerts.transports.sendgrid import json_bytes


def fragment(kind: str, importance: int, title: str, html: str, text: str) -> Fragment:
    return Fragment(kind, importance, title, text, html, json_bytes(text) + json_bytes(html))


def fragments(changes: int, new: int) -> dict[str, Fragment]:
    found = {
        INTRO["daily"]: fragment("static", 0, "", "<h1>Your daily digest</h1>", "Your daily digest\n"),
        CHANGES_SECTION: fragment("static", 0, "", "<h2>Changes</h2>", "\nCHANGES\n"),
        group_key("Asthma"): fragment("group", 0, "Asthma", '<h2>Asthma</h2><a href="%%stop%%">Stop</a>', "%%stop%%\n"),
    }
    for i in range(changes):
        # Study i's change has importance i % 3: the order shown is by importance, then title.
        found[change_key(f"NCT{i:08d}", "a", "b")] = fragment(
            "changed",
            i % 3,
            f"Study {i:02d}",
            f'<p>Study {i:02d} {"x" * 300}<a href="%%stop%%">Stop</a></p>',
            "t" * 300,
        )
    for i in range(new):
        found[f"new:NCT9{i:07d}"] = fragment("new", 0, f"New {i:02d}", f"<p>New {i:02d} {'y' * 200}</p>", "n" * 200)
    return found


def items(changes: int, new: int) -> list[Item]:
    held = [Item(change_key(f"NCT{i:08d}", "a", "b"), None, i + 1, "active", False, f"tok{i}") for i in range(changes)]
    held += [Item(f"new:NCT9{i:07d}", "Asthma", 1000, "active", False, "tokgroup") for i in range(new)]
    return held


BUDGET = Budget(bytes=4000, stop_link_bytes=100, more_bytes=300)


def test_a_digest_that_fits_is_whole_and_says_nothing_more() -> None:
    assembled = assemble(items(3, 2), fragments(3, 2), BUDGET)
    assert assembled is not None and assembled.omitted == 0 and assembled.entries == 5
    assert DIGEST_URL not in assembled.html + assembled.text and "more change" not in assembled.text


def test_the_most_important_entries_that_fit_then_n_more_changes() -> None:
    held, made = items(12, 6), fragments(12, 6)
    whole = assemble(held, made)
    assembled = assemble(held, made, BUDGET)
    assert whole is not None and assembled is not None
    assert whole.entries == 18 and whole.omitted == 0
    assert 0 < assembled.entries < 18 and assembled.entries + assembled.omitted == 18
    # What is shown is the start of the whole digest's order (most important first), nothing skipped.
    assert whole.key[: len(assembled.key) - 1] == assembled.key[:-1]
    assert assembled.key[-1] == f"more:{assembled.omitted}"
    assert f"{assembled.omitted} more changes did not fit in this email" in assembled.text
    assert DIGEST_URL in assembled.html and DIGEST_URL in assembled.text
    # Within the budget, counting each stop link at its written-out length and the note.
    stops = len(assembled.stops)
    size = json_bytes(assembled.html) + json_bytes(assembled.text) + 2 * stops * (BUDGET.stop_link_bytes - 10)
    assert size <= BUDGET.bytes
    # Only shown entries' stop links and subscriptions are in the email.
    assert len(assembled.stops) == len(assembled.subscription_ids) == assembled.entries
    # The subject tells what happened, not what fitted.
    assert assembled.subject == whole.subject == "Your daily digest: 12 updates to studies you follow and 6 new studies"


def test_digests_of_the_same_shapes_share_one_plan_and_differ_only_in_links() -> None:
    made = fragments(12, 0)
    mine, yours = (
        items(12, 0),
        [
            Item(i.dedupe_key, None, i.subscription_id + 50, "active", False, "x" + (i.unsubscribe_token or ""))
            for i in items(12, 0)
        ],
    )
    planned = plan([shape(i) for i in mine], made, BUDGET)
    assert planned is not None and planned == plan([shape(i) for i in yours], made, BUDGET)
    a = planned.bind([i.unsubscribe_token for i in mine], [i.subscription_id for i in mine])
    b = planned.bind([i.unsubscribe_token for i in yours], [i.subscription_id for i in yours])
    assert a.html == b.html and a.key == b.key and a.stops != b.stops
    assert set(b.stops.values()) == {"x" + v for v in a.stops.values()}
