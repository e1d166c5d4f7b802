"""Property-based: malformed and hostile events are rejected or safely rendered, never half-applied.

hypothesis builds events with wrong types, missing fields, huge fields, invalid NCT IDs, unicode and
control characters, HTML and CRLF in titles and conditions, and feeds them to the same consumer the Celery
tasks call. The consumer must never raise: every event ends as rejected (with a reason) or accepted.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from alerts.db import transaction
from alerts.models import Delivery, Event, RejectedEvent, Trial
from alerts.pipeline import Rejected, ingest
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import follow

BASE = study("NCT04015791")

hostile_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(1)>",
            "Title\r\nBcc: victim@example.org",
            "Subject\nX-Injected: yes",
            "\x00nul",
            "\u202eevil\u202c",
            "A" * 2000,
            "",
            "   ",
            "%%unsubscribe_url%%",
            "{{ 7*7 }}",
            "{% raw %}",
            "Ｆｕｌｌｗｉｄｔｈ",
            "emoji 🧬💉",
            "NCT04015791\u0000",
        ]
    ),
)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile_text)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)


def mutate(event: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    target: Any = event
    for key in path[:-1]:
        if not isinstance(target, dict):
            return event
        target = target.setdefault(key, {})
    if isinstance(target, dict):
        if value is ...:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    return event


PATHS = [
    ["type"],
    ["occurred_at"],
    ["event_id"],
    ["condition"],
    ["trial"],
    ["previous"],
    ["trial", "protocolSection"],
    ["trial", "protocolSection", "identificationModule"],
    ["trial", "protocolSection", "identificationModule", "nctId"],
    ["trial", "protocolSection", "identificationModule", "briefTitle"],
    ["trial", "protocolSection", "statusModule", "overallStatus"],
    ["trial", "protocolSection", "conditionsModule", "conditions"],
    ["trial", "protocolSection", "contactsLocationsModule", "locations"],
    ["trial", "protocolSection", "designModule", "phases"],
    ["trial", "protocolSection", "designModule", "enrollmentInfo"],
    ["trial", "protocolSection", "eligibilityModule", "eligibilityCriteria"],
    ["trial", "derivedSection"],
]


@st.composite
def hostile_events(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_value)  # not even an object
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(["trial.changed", "trial.new_for_condition"])),
        "occurred_at": "2026-11-20T10:00:00Z",
        "condition": "Lumbar Disc Disease",
        "trial": copy.deepcopy(BASE),
    }
    if event["type"] == "trial.changed":
        event["previous"] = copy.deepcopy(BASE)
        del event["condition"]
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS))
        value = draw(st.one_of(json_value, st.just(...), hostile_text))
        mutate(event, path, value)
    return event


def counts(runtime: Runtime) -> tuple[int, int, int, int]:
    with transaction(runtime.engine) as session:
        return tuple(  # type: ignore[return-value]
            int(session.scalar(select(func.count()).select_from(m)) or 0)
            for m in (Event, RejectedEvent, Trial, Delivery)
        )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=hostile_events())
def test_hostile_events_never_crash_or_half_apply(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport, event: Any
) -> None:
    if not counts(runtime)[0]:
        follow(runtime, "reader@example.org", trial="NCT04015791")
        follow(runtime, "reader@example.org", condition="Lumbar Disc Disease")
    before = counts(runtime)
    sent_before = len(memory.batches)
    outcome = ingest(runtime, event, inline, "test")
    after = counts(runtime)
    if isinstance(outcome, Rejected):
        assert outcome.errors and all(e["field"] and e["message"] for e in outcome.errors)
        # Only the rejection was recorded.
        assert after == (before[0], before[1] + 1, before[2], before[3])
    else:
        assert after[1] == before[1]
        assert after[0] in (before[0], before[0] + 1)
    for batch in memory.batches[sent_before:]:
        for message in memory.messages[-len(batch.recipients) :]:
            subject = str(message["Subject"])
            assert "\n" not in subject and "\r" not in subject
            assert message["Bcc"] is None and message["X-Injected"] is None
            html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
            assert "<script>" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")


def test_html_and_crlf_in_titles_are_escaped_in_emails(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    follow(runtime, "reader@example.org", condition="Lumbar Disc Disease")
    record = copy.deepcopy(BASE)
    record["protocolSection"]["identificationModule"]["briefTitle"] = (
        "<script>alert('x')</script> Study\r\nBcc: victim@example.org"
    )
    record["protocolSection"]["conditionsModule"]["conditions"] = ["Lumbar Disc Disease", "<b>Bold</b> condition"]
    outcome = ingest(
        runtime,
        {
            "type": "trial.new_for_condition",
            "condition": "<i>Lumbar</i> & <script>x</script>",
            "occurred_at": "2026-11-20T10:00:00Z",
            "trial": record,
        },
        inline,
        "test",
    )
    assert not isinstance(outcome, Rejected), outcome
    (message,) = memory.messages
    assert message["Bcc"] is None
    assert "\n" not in str(message["Subject"])
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>Bold</b>" not in html and "<script>x" not in html
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Bcc: victim" not in text.split("\n\n")[0]
