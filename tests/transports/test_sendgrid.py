"""The SendGrid transport through the official client over HTTP, against the stand-in on 127.0.0.1.

Every request is validated by the stand-in against SendGrid's official OpenAPI description and its
documented rules (limits, duplicates, sizes), so a request shape the real API would refuse fails here too.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from alerts.transports import sendgrid as sendgrid_module
from alerts.transports.base import Outcome, Recipient, Result
from alerts.transports.sendgrid import SendGridTransport, base_body, parse_retry_after, plan, prepare
from tests.support.sendgrid_standin import MailSendValidator, SendGridStandIn
from tests.transports.conftest import API_KEY, make_batch, recipient


def outcomes(results: list[Result]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome.value] = counts.get(r.outcome.value, 0) + 1
    return counts


def test_one_request_per_batch_with_per_recipient_personalizations(
    sendgrid: SendGridTransport, standin: SendGridStandIn
) -> None:
    results = sendgrid.send(make_batch(1000))
    assert outcomes(results) == {"sent": 1000}
    assert len(standin.requests) == 1, "one API request for a batch of 1000"
    message_id = standin.message_ids[0]
    assert {r.provider_message_id for r in results} == {message_id}
    assert [r.delivery_id for r in results] == list(range(1, 1001))

    body = standin.requests[0].body
    # The rendering travels once, with placeholders; each recipient gets its values as substitutions.
    assert body["subject"] == "New trial for Herniated Disc"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert "%%unsubscribe_url%%" in body["content"][1]["value"]
    assert body["from"] == {"email": "alerts@alerts.example.org", "name": "Trial alerts"}
    # Privacy: no open pixel, no rewritten links, no SendGrid footer.
    tracking = body["tracking_settings"]
    assert tracking["click_tracking"] == {"enable": False, "enable_text": False}
    assert tracking["open_tracking"] == {"enable": False}
    assert tracking["subscription_tracking"] == {"enable": False}

    first = standin.personalizations[0]
    assert first.to == ("person1@example.org",)
    assert first.substitutions == {
        "%%unsubscribe_url%%": "https://alerts.example.org/unsubscribe/tok-1",
        "%%manage_url%%": "https://alerts.example.org/manage/tok-1",
    }
    assert first.headers == {
        "List-Unsubscribe": "<https://alerts.example.org/unsubscribe/tok-1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "Message-ID": "<delivery-1@alerts.example.org>",
    }
    assert first.custom_args == {"delivery_id": "1"}
    assert standin.custom_arg_counts("delivery_id") == {str(i): 1 for i in range(1, 1001)}


def test_request_bodies_pass_the_official_schema(standin: SendGridStandIn) -> None:
    batch = make_batch(5)
    items, failed = prepare(batch)
    body = base_body(batch) | {"personalizations": [i.body for i in items]}
    assert not failed
    assert MailSendValidator.shared().validate(body) == []
    # The validator is not a rubber stamp: a personalization without "to" is refused.
    broken = json.loads(json.dumps(body))
    del broken["personalizations"][0]["to"]
    assert MailSendValidator.shared().validate(broken)


def test_non_alert_batches_do_not_claim_delivery_ids(sendgrid: SendGridTransport, standin: SendGridStandIn) -> None:
    # A confirmation email's "delivery_id" is a subscription id: it must not be echoed as one of ours.
    batch = make_batch(1)
    confirm = type(batch)(batch.content, batch.recipients, batch.from_email, batch.from_name, {}, "confirm")
    assert outcomes(sendgrid.send(confirm)) == {"sent": 1}
    assert standin.personalizations[0].custom_args == {"ref": "confirm-1"}
    assert standin.requests[0].body["categories"] == ["confirm"]


def test_same_address_twice_goes_in_separate_requests(sendgrid: SendGridTransport, standin: SendGridStandIn) -> None:
    recipients = [recipient(1, "Same@Example.org"), recipient(2), recipient(3, "same@example.org")]
    results = sendgrid.send(make_batch(recipients=recipients))
    assert outcomes(results) == {"sent": 3}
    assert len(standin.requests) == 2
    assert standin.count_for("same@example.org") == 2


def test_more_than_1000_recipients_are_split(sendgrid: SendGridTransport, standin: SendGridStandIn) -> None:
    results = sendgrid.send(make_batch(1500))
    assert outcomes(results) == {"sent": 1500}
    assert [len(r.body["personalizations"]) for r in standin.requests] == [1000, 500]
    assert len(standin.recipient_counts()) == 1500


def test_requests_over_the_size_limit_are_split(
    sendgrid: SendGridTransport, standin: SendGridStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 40_000
    monkeypatch.setattr(sendgrid_module, "MAX_REQUEST_BYTES", limit)
    results = sendgrid.send(make_batch(300))
    assert outcomes(results) == {"sent": 300}
    assert len(standin.requests) > 1
    assert all(len(json.dumps(r.body)) <= limit for r in standin.requests)
    assert max(standin.recipient_counts().values()) == 1


def test_oversized_substitutions_fail_alone(sendgrid: SendGridTransport, standin: SendGridStandIn) -> None:
    big = recipient(2)
    big = type(big)(big.delivery_id, big.email, {"unsubscribe_url": "https://x.example/" + "a" * 10_000}, "<b@x>")
    results = sendgrid.send(make_batch(recipients=[recipient(1), big, recipient(3)]))
    by_id = {r.delivery_id: r for r in results}
    assert by_id[2].outcome is Outcome.FAILED and "10000" in (by_id[2].error or "")
    assert by_id[1].outcome is by_id[3].outcome is Outcome.SENT
    assert standin.count_for(big.email) == 0


def test_value_unsafe_in_html_fails_alone(sendgrid: SendGridTransport) -> None:
    bad = recipient(2)
    bad = type(bad)(2, bad.email, {"unsubscribe_url": 'https://x.example/"><script>'}, "<b@x>")
    results = sendgrid.send(make_batch(recipients=[recipient(1), bad]))
    assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.SENT] or {
        r.delivery_id: r.outcome for r in results
    } == {1: Outcome.SENT, 2: Outcome.FAILED}


def test_one_bad_address_fails_alone_and_the_rest_is_sent(
    sendgrid: SendGridTransport, standin: SendGridStandIn
) -> None:
    standin.add_bad_addresses("person17@example.org", "person640@example.org")
    results = sendgrid.send(make_batch(1000))
    failed = {r.delivery_id: r for r in results if r.outcome is Outcome.FAILED}
    assert set(failed) == {17, 640}
    assert all(r.error_code == 400 for r in failed.values())
    assert "Does not contain a valid address" in (failed[17].error or "")
    assert "person17" not in (failed[17].error or ""), "addresses are never kept in error texts"
    assert outcomes(results) == {"sent": 998, "failed": 2}
    assert len(standin.requests) == 1 and len(standin.recipient_counts()) == 998


def test_a_400_naming_no_recipient_is_bisected(sendgrid: SendGridTransport, standin: SendGridStandIn) -> None:
    standin.fail_next(1, 400)  # one unexplained 400: the halves go through
    assert outcomes(sendgrid.send(make_batch(8))) == {"sent": 8}
    assert [len(r.body["personalizations"]) for r in standin.requests] == [4, 4]
    standin.reset()
    standin.fail_next(100, 400)  # every request refused: each recipient ends alone, failed
    results = sendgrid.send(make_batch(4))
    assert outcomes(results) == {"failed": 4}
    assert all(r.error_code == 400 and "SendGrid 400" in (r.error or "") for r in results)
    assert standin.stats()["requests_total"] == 7  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1


def test_bad_api_key_fails_without_retry(standin: SendGridStandIn) -> None:
    transport = SendGridTransport("SG.wrong", standin.url, timeout_s=5)
    recipients = [recipient(1, "dup@example.org"), recipient(2, "dup@example.org")]  # two requests planned
    results = transport.send(make_batch(recipients=recipients))
    assert [(r.outcome, r.error_code) for r in results] == [(Outcome.FAILED, 401)] * 2
    assert "authorization grant is invalid" in (results[0].error or "")
    assert standin.stats()["requests_total"] == 1, "the same refusal is not asked for twice"


@pytest.mark.parametrize("status", [403, 413])
def test_other_refusals_fail_with_the_status(
    sendgrid: SendGridTransport, standin: SendGridStandIn, status: int
) -> None:
    standin.fail_next(100, status)
    results = sendgrid.send(make_batch(1))
    assert [(r.outcome, r.error_code) for r in results] == [(Outcome.FAILED, status)]


def test_rate_limit_is_retried_after_what_the_provider_asked(
    sendgrid: SendGridTransport, standin: SendGridStandIn
) -> None:
    standin.fail_next(1, 429, retry_after_s=7)
    results = sendgrid.send(make_batch(3))
    assert {r.outcome for r in results} == {Outcome.RETRY}
    assert all(r.retry_after_s == pytest.approx(7, abs=1) and r.error_code == 429 for r in results)
    assert not any(r.ambiguous for r in results)
    assert standin.emails_accepted == 0


@pytest.mark.parametrize(("status", "wait"), [(500, None), (503, 4.0)])
def test_server_errors_are_retried(
    sendgrid: SendGridTransport, standin: SendGridStandIn, status: int, wait: float | None
) -> None:
    standin.fail_next(1, status, retry_after_s=4)
    results = sendgrid.send(make_batch(2))
    assert [(r.outcome, r.error_code, r.retry_after_s, r.ambiguous) for r in results] == [
        (Outcome.RETRY, status, wait, False)
    ] * 2


def test_a_timeout_is_retried_and_flagged_ambiguous(standin: SendGridStandIn) -> None:
    standin.configure(timeout_delay_s=1.5)
    standin.fail_next(1, "timeout")
    transport = SendGridTransport(API_KEY, standin.url, timeout_s=0.4)
    started = time.monotonic()
    results = transport.send(make_batch(2))
    assert time.monotonic() - started < 1.4, "the client timeout applies"
    assert [(r.outcome, r.ambiguous) for r in results] == [(Outcome.RETRY, True)] * 2
    assert "acceptance unknown" in (results[0].error or "")


def test_an_unreachable_api_is_retried_not_ambiguous() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = SendGridTransport(API_KEY, f"http://127.0.0.1:{port}", timeout_s=2)
    results = transport.send(make_batch(2))
    assert [(r.outcome, r.ambiguous) for r in results] == [(Outcome.RETRY, False)] * 2
    assert "unreachable" in (results[0].error or "")


def test_time_budget_leaves_the_rest_for_a_retry(standin: SendGridStandIn) -> None:
    ticks = iter([0.0, 0.0, 20.0, 20.0, 20.0])
    transport = SendGridTransport(API_KEY, standin.url, timeout_s=5, budget_s=15, clock=lambda: next(ticks))
    recipients = [recipient(1, "a@example.org"), recipient(2, "a@example.org")]  # two requests
    results = transport.send(make_batch(recipients=recipients))
    assert [(r.delivery_id, r.outcome, r.ambiguous) for r in results] == [
        (1, Outcome.SENT, False),
        (2, Outcome.RETRY, False),
    ]
    assert len(standin.requests) == 1


def test_parse_retry_after() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after({"Retry-After": "12"}, now) == 12
    http_date = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"Retry-After": http_date}, now) == pytest.approx(30)
    assert parse_retry_after({"X-RateLimit-Reset": str(int(now) + 9)}, now) == 9
    assert parse_retry_after({"X-RateLimit-Reset": str(int(now) - 9)}, now) == 0
    assert parse_retry_after({"Retry-After": "999999"}, now) == 3600
    assert parse_retry_after({"Retry-After": "soon"}, now) is None
    assert parse_retry_after({}, now) is None


def test_neither_the_api_key_nor_addresses_are_logged(
    sendgrid: SendGridTransport,
    standin: SendGridStandIn,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # the client logs headers and bodies at DEBUG: it must stay quiet
    standin.add_bad_addresses("person2@example.org")
    sendgrid.send(make_batch(3))
    captured = capsys.readouterr()
    logged = caplog.text + captured.out + captured.err
    assert "sendgrid.accepted" in logged, "the transport logs its requests"
    assert API_KEY not in logged
    assert "@example.org" not in logged
    assert API_KEY not in repr(sendgrid)


def test_after_a_retryable_answer_the_rest_of_the_batch_waits(
    sendgrid: SendGridTransport, standin: SendGridStandIn
) -> None:
    standin.fail_next(1, 500)
    recipients = [recipient(1, "a@example.org"), recipient(2, "a@example.org")]  # two requests planned
    results = sendgrid.send(make_batch(recipients=recipients))
    assert [(r.outcome, r.ambiguous) for r in results] == [(Outcome.RETRY, False)] * 2
    assert (results[1].error or "").startswith("not tried after: SendGrid 500")
    assert standin.stats()["requests_total"] == 1


def test_fragments_and_a_recipients_own_subject_travel_in_their_personalization(
    sendgrid: SendGridTransport, standin: SendGridStandIn
) -> None:
    """A reader with a place (alerts.contents): their "near you" fragments, one per part, and their subject."""
    near = recipient(2)
    near = type(near)(
        2,
        near.email,
        dict(near.values)
        | {"near_site_text": "The nearest open site is 3 km from you:", "near_site_html": "<p>3 km &amp; open</p>"},
        near.message_id,
        "A new site opened 3 km from you: A study",
    )
    results = sendgrid.send(make_batch(recipients=[recipient(1), near]))
    assert outcomes(results) == {"sent": 2} and len(standin.requests) == 1
    by_email = {p.to[0]: p for p in standin.personalizations}
    placed = by_email[near.email]
    assert placed.subject == "A new site opened 3 km from you: A study"
    assert placed.substitutions["%%near_site_html%%"] == "<p>3 km &amp; open</p>"  # our own HTML, as it is
    assert by_email["person1@example.org"].subject == "New trial for Herniated Disc"


def test_json_bytes_counts_what_json_encoding_writes() -> None:
    # The substitutions limit is measured this way for every recipient: it must equal compact UTF-8 JSON.
    import json as json_module

    from alerts.transports.sendgrid import json_bytes

    for value in [
        "",
        "plain",
        "é → x",
        "a\x01b\x1f",
        'tab\tquote"back\\',
        "é\r\n",
        "\x7f",
        "\u2028",
        "x" * 9000 + '\n"',
    ]:
        encoded = json_module.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        assert json_bytes(value) == len(encoded) - 2, repr(value)


def _with_parts(i: int, html: str, text: str) -> Recipient:
    """A packed digest's recipient: its own entries as parts (alerts.digests.send)."""
    r = recipient(i)
    return Recipient(
        r.delivery_id, r.email, r.values, r.message_id, parts={"subject": "Digest", "html": html, "text": text}
    )


def test_the_size_bound_of_digest_parts_is_tight_and_never_short() -> None:
    # Parts are bounded from their exact SendGrid measure (quotes, backslashes, newlines and a control
    # character escaped in JSON; non-ASCII characters written as \uXXXX or a surrogate pair by the request's
    # ensure_ascii JSON), so 1,000 packed digests of ~9 KB are known to fit 30 MB without encoding them
    # again. The bound is never below the bytes the request will carry.
    ascii_html = '<p class="x">A \\ "quoted" entry\x01</p>\n' * 120
    ascii_text = 'An entry: "quoted"\t\\ line\n' * 100
    mostly_ascii = "<p>Recruiting → not yet recruiting — 120 participants</p>\n" * 70
    dense = "Étude « recrutement » → 😀\n" * 100
    recipients = [_with_parts(1, ascii_html, ascii_text), _with_parts(2, mostly_ascii, mostly_ascii)]
    items, failed = prepare(make_batch(recipients=[*recipients, _with_parts(3, dense, dense)]))
    assert not failed
    for item in items:
        assert len(json.dumps(item.body)) + 2 <= item.size
    for item in items[:2]:
        assert item.size < 2 * len(json.dumps(item.body)), "parts are counted from their exact size"
    # So 1,000 digests of nearly SendGrid's 10,000 bytes each are one request, planned without measuring
    # (plan replaces a bound by the measured size only when the bounds add up to more than 30 MB).
    batch = make_batch(recipients=[_with_parts(i, mostly_ascii, mostly_ascii[:2000]) for i in range(1, 1001)])
    items, failed = prepare(batch)
    bounds = [item.size for item in items]
    chunks = plan(items, len(json.dumps(base_body(batch))))
    assert not failed and len(chunks) == 1 and [item.size for item in items] == bounds


def test_packed_digests_over_the_size_limit_are_split_exactly(
    sendgrid: SendGridTransport, standin: SendGridStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 60_000
    monkeypatch.setattr(sendgrid_module, "MAX_REQUEST_BYTES", limit)
    html = '<p>An entry with "quotes"</p>\n' * 150
    results = sendgrid.send(make_batch(recipients=[_with_parts(i, html, "An entry\n" * 100) for i in range(1, 41)]))
    assert outcomes(results) == {"sent": 40}
    assert len(standin.requests) > 1
    assert all(len(json.dumps(r.body)) <= limit for r in standin.requests)


def test_a_body_orjson_cannot_encode_is_sent_as_json_escapes(
    sendgrid: SendGridTransport, standin: SendGridStandIn
) -> None:
    # Request bodies are encoded by orjson (UTF-8); text that is not valid Unicode (a lone surrogate)
    # falls back to json's \uXXXX escapes, as the official client would send it.
    odd = recipient(1)
    odd = Recipient(odd.delivery_id, odd.email, odd.values, odd.message_id, subject="Digest \ud800")
    results = sendgrid.send(make_batch(recipients=[odd, recipient(2)]))
    assert outcomes(results) == {"sent": 2}
    assert standin.personalizations[0].subject == "Digest \ud800"


def test_substitution_bytes_counts_what_json_encoding_writes() -> None:
    # The whole object in one measure (orjson).
    from alerts.transports.sendgrid import substitution_bytes

    values = ["", "plain", "é → x", "a\x01b\x1f", 'tab\tquote"back\\', "é\r\n", "\x7f", "\u2028", "😀" * 10]
    substitutions = {f"%%v{i}%%": value for i, value in enumerate(values)}
    encoded = json.dumps(substitutions, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert substitution_bytes(substitutions) == len(encoded)
    assert substitution_bytes({}) == 2
