"""The SendGrid stand-in, driven through the official `sendgrid` client where a client is involved."""

from __future__ import annotations

import copy
import gzip
import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from python_http_client.exceptions import (
    BadRequestsError,
    HTTPError,
    InternalServerError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UnauthorizedError,
)
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader
from sendgrid.helpers.mail import (
    Cc,
    CustomArg,
    From,
    Header,
    Mail,
    Personalization,
    Substitution,
    To,
)

from tests.support.sendgrid_standin import (
    _EMAIL_RE,
    MAX_CUSTOM_ARGS_BYTES,
    MAX_SUBSTITUTIONS_BYTES,
    SENDGRID_TEST_VECTOR,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    FaultConfig,
    MailSendValidator,
    SendGridStandIn,
    StandInProcess,
    _all_valid_addresses,
    generate_webhook_keypair,
    sign_webhook,
)

SENDER = "alerts@trial-alerts.example.org"


@pytest.fixture
def standin() -> Iterator[SendGridStandIn]:
    with SendGridStandIn(bad_addresses={"Bounce-Me@Example.com"}) as sg:
        yield sg


@pytest.fixture
def client(standin: SendGridStandIn) -> SendGridAPIClient:
    return SendGridAPIClient(api_key="SG.test", host=standin.url)


def mail_with(personalizations: list[Personalization], **kwargs: Any) -> Mail:
    mail = Mail(
        from_email=From(SENDER, "Trial Alerts"),
        subject=kwargs.pop("subject", "New trials for -condition-"),
        plain_text_content="Hello -name-, see -url-",
        html_content="<p>Hello -name-, see <a href='-url-'>this</a></p>",
    )
    for p in personalizations:  # add_personalization() prepends unless given an index
        mail.add_personalization(p, index=len(mail.personalizations or []))
    return mail


def personalization(address: str, n: int = 0, *, cc: str | None = None) -> Personalization:
    p = Personalization()
    p.add_to(To(address, f"Reader {n}"))
    if cc:
        p.add_cc(Cc(cc))
    p.add_substitution(Substitution("-name-", f"Reader {n}"))
    p.add_substitution(Substitution("-url-", f"https://alerts.example.org/d/{n}"))
    p.add_custom_arg(CustomArg("delivery_id", f"d-{n}"))
    p.add_header(Header("List-Unsubscribe", f"<https://alerts.example.org/u/{n}>"))
    p.add_header(Header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    return p


def raw_body(n: int, *, domain: str = "example.com") -> dict[str, Any]:
    """A plain-dict body with `n` one-recipient personalizations."""
    return {
        "from": {"email": SENDER},
        "subject": "s",
        "content": [{"type": "text/plain", "value": "hi"}, {"type": "text/html", "value": "<p>hi</p>"}],
        "personalizations": [
            {
                "to": [{"email": f"user{i}@{domain}"}],
                "custom_args": {"delivery_id": f"d-{i}"},
                "substitutions": {"-name-": f"User {i}"},
                "headers": {"List-Unsubscribe": f"<https://alerts.example.org/u/{i}>"},
            }
            for i in range(n)
        ],
    }


def errors_of(exc: HTTPError) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = json.loads(exc.body)["errors"]
    return errors


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# -- accepted mail ---------------------------------------------------------------------------------


def test_valid_mail_with_three_personalizations_is_accepted_and_recorded(
    standin: SendGridStandIn, client: SendGridAPIClient
) -> None:
    mail = mail_with([personalization(f"reader{n}@example.com", n) for n in range(3)])
    mail.add_custom_arg(CustomArg("campaign", "weekly"))

    response = client.send(mail)

    assert response.status_code == 202
    assert response.body == b""
    message_id = response.headers["X-Message-Id"]
    assert len(message_id) == 22
    assert standin.message_ids == [message_id]
    assert [standin.count_for(f"READER{n}@example.com") for n in range(3)] == [1, 1, 1]
    assert standin.emails_accepted == 3
    assert standin.custom_args == [{"campaign": "weekly", "delivery_id": f"d-{n}"} for n in range(3)]
    recorded = standin.personalizations
    assert [p.index for p in recorded] == [0, 1, 2]
    first = recorded[0]
    assert first.message_id == message_id
    assert first.to == ("reader0@example.com",)
    assert first.from_email == SENDER
    assert first.subject == "New trials for -condition-"
    assert first.substitutions == {"-name-": "Reader 0", "-url-": "https://alerts.example.org/d/0"}
    assert first.headers["List-Unsubscribe"] == "<https://alerts.example.org/u/0>"
    assert first.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    (request,) = standin.requests
    assert request.body == mail.get()
    assert "Authorization" not in request.headers
    stats = standin.stats(custom_arg_key="delivery_id")
    assert stats["requests_accepted"] == 1
    assert stats["personalizations_accepted"] == 3
    assert stats["responses_by_status"] == {"202": 1}
    assert stats["custom_arg_counts"]["distinct"] == 3
    assert stats["custom_arg_counts"]["duplicates"] == {}


def test_each_request_gets_its_own_message_id_and_counts_add_up(
    standin: SendGridStandIn, client: SendGridAPIClient
) -> None:
    mail = mail_with([personalization("same@example.com")])
    ids = {client.send(mail).headers["X-Message-Id"] for _ in range(3)}
    assert len(ids) == 3
    assert standin.count_for("same@example.com") == 3
    stats = standin.stats()
    assert stats["recipients_with_duplicates"] == 1
    assert stats["max_per_recipient"] == 3


def test_recipient_summaries_follow_overlapping_requests(standin: SendGridStandIn, client: SendGridAPIClient) -> None:
    for n in (3, 5, 2, 1):
        assert client.send(raw_body(n)).status_code == 202
    upper = raw_body(2)
    for p in upper["personalizations"]:
        p["to"][0]["email"] = p["to"][0]["email"].upper()
    assert client.send(upper).status_code == 202
    counts = standin.recipient_counts()
    assert counts == {f"user{n}@example.com": times for n, times in enumerate([5, 4, 2, 1, 1])}

    def summary() -> tuple[int, int, int]:
        stats = standin.stats()
        return stats["distinct_recipients"], stats["recipients_with_duplicates"], stats["max_per_recipient"]

    assert summary() == (5, 3, 5)
    standin.reset()
    assert summary() == (0, 0, 0)


def test_recipient_summaries_stay_exact_for_any_sequence_of_counts() -> None:
    sg = SendGridStandIn()  # not started: drives the counting directly
    rng = random.Random(7)
    for _ in range(500):
        pool = [f"a{i}@example.com" for i in range(rng.choice([3, 30, 300]))]
        addresses = [rng.choice(pool) for _ in range(rng.randrange(0, 12))]
        if rng.random() < 0.7:  # what validation lets through: no address twice in a request
            addresses = list(dict.fromkeys(addresses))
        with sg._lock:
            sg._count_recipients(addresses)
        counts = sg.recipient_counts().values()
        stats = sg.stats()
        assert stats["recipients_with_duplicates"] == sum(1 for c in counts if c > 1)
        assert stats["max_per_recipient"] == max(counts, default=0)


def test_1000_personalizations_are_accepted(standin: SendGridStandIn, client: SendGridAPIClient) -> None:
    assert client.send(raw_body(1000)).status_code == 202
    assert standin.stats()["distinct_recipients"] == 1000


def test_gzip_bodies_are_accepted(standin: SendGridStandIn) -> None:
    body = gzip.compress(json.dumps(raw_body(2)).encode())
    status, _, _ = post(
        standin.url + "/v3/mail/send", body, {"Authorization": "Bearer SG.x", "Content-Encoding": "gzip"}
    )
    assert status == 202
    assert standin.count_for("user1@example.com") == 1


# -- rejected mail ---------------------------------------------------------------------------------


def test_1001_personalizations_are_rejected(standin: SendGridStandIn, client: SendGridAPIClient) -> None:
    mail = mail_with([personalization(f"reader{n}@example.com", n) for n in range(1001)])
    with pytest.raises(BadRequestsError) as caught:
        client.send(mail)
    assert caught.value.status_code == 400
    (error,) = errors_of(caught.value)
    assert error["field"] == "personalizations"
    assert "1001 personalizations" in error["message"]
    assert standin.emails_accepted == 0
    assert standin.stats()["responses_by_status"] == {"400": 1}


def test_more_than_1000_recipients_in_total_are_rejected(client: SendGridAPIClient) -> None:
    body = raw_body(2)
    body["personalizations"][0]["cc"] = [{"email": f"cc{i}@example.com"} for i in range(500)]
    body["personalizations"][1]["bcc"] = [{"email": f"bcc{i}@example.com"} for i in range(499)]
    with pytest.raises(BadRequestsError) as caught:
        client.send(body)
    assert [e["message"] for e in errors_of(caught.value)] == [
        "There is a limit of 1000 total recipients (to + cc + bcc) per request."
    ]
    body["personalizations"][1]["bcc"].pop()
    assert client.send(body).status_code == 202


def test_duplicate_address_across_personalizations_is_rejected_case_insensitively(
    standin: SendGridStandIn, client: SendGridAPIClient
) -> None:
    mail = mail_with([personalization("ann@example.com", 0), personalization("Ann@Example.COM", 1)])
    with pytest.raises(BadRequestsError) as caught:
        client.send(mail)
    (error,) = errors_of(caught.value)
    assert error["field"] == "personalizations.1"
    assert "[Ann@Example.COM] more than once" in error["message"]
    assert standin.count_for("ann@example.com") == 0


def test_duplicate_address_within_a_personalization_is_rejected(client: SendGridAPIClient) -> None:
    mail = mail_with([personalization("bob@example.com", cc="BOB@example.com")])
    with pytest.raises(BadRequestsError) as caught:
        client.send(mail)
    (error,) = errors_of(caught.value)
    assert error["field"] == "personalizations.0"
    assert "unique between to, cc, and bcc" in error["message"]
    assert "personalizations.0.cc field" in error["message"]


def _substitutions_of_size(size: int) -> dict[str, str]:
    base = {"-k-": ""}
    overhead = len(json.dumps(base, separators=(",", ":")))
    return {"-k-": "x" * (size - overhead)}


def test_substitutions_over_10000_bytes_are_rejected(client: SendGridAPIClient) -> None:
    body = raw_body(3)
    body["personalizations"][2]["substitutions"] = _substitutions_of_size(MAX_SUBSTITUTIONS_BYTES + 1)
    with pytest.raises(BadRequestsError) as caught:
        client.send(body)
    (error,) = errors_of(caught.value)
    assert error["field"] == "personalizations.2.substitutions"
    assert "10001 bytes" in error["message"]

    body["personalizations"][2]["substitutions"] = _substitutions_of_size(MAX_SUBSTITUTIONS_BYTES)
    assert client.send(body).status_code == 202


def test_oversize_substitutions_via_the_mail_helper(client: SendGridAPIClient) -> None:
    p = personalization("carol@example.com")
    p.add_substitution(Substitution("-essay-", "é" * 5000))  # 10,000 bytes of UTF-8 on its own
    with pytest.raises(BadRequestsError) as caught:
        client.send(mail_with([p]))
    assert errors_of(caught.value)[0]["field"] == "personalizations.0.substitutions"


def test_custom_args_count_the_message_level_ones_too(client: SendGridAPIClient) -> None:
    body = raw_body(2)
    body["custom_args"] = {"campaign": "c" * (MAX_CUSTOM_ARGS_BYTES // 2)}
    body["personalizations"][1]["custom_args"] = {"note": "n" * (MAX_CUSTOM_ARGS_BYTES // 2)}
    with pytest.raises(BadRequestsError) as caught:
        client.send(body)
    assert [e["field"] for e in errors_of(caught.value)] == ["personalizations.1.custom_args"]


def test_custom_args_values_must_be_strings(client: SendGridAPIClient) -> None:
    body = raw_body(1)
    body["personalizations"][0]["custom_args"] = {"subscriber_id": 42}
    with pytest.raises(BadRequestsError) as caught:
        client.send(body)
    assert errors_of(caught.value) == [
        {
            "message": "Invalid type. Expected: string, given: integer.",
            "field": "personalizations.0.custom_args.subscriber_id",
            "help": None,
        }
    ]


def test_missing_from_is_a_schema_violation_naming_the_field(client: SendGridAPIClient) -> None:
    mail = mail_with([personalization("dan@example.com")])
    mail.from_email = None
    body = mail.get()
    assert "from" not in body
    with pytest.raises(BadRequestsError) as caught:
        client.send(body)
    (error,) = errors_of(caught.value)
    assert error["field"] == "from"
    assert error["message"].startswith("The from object must be provided")
    assert error["help"]["keyword"] == "required"


def test_schema_type_errors_name_the_nested_field(client: SendGridAPIClient) -> None:
    body = raw_body(2)
    body["personalizations"][1]["to"][0]["email"] = 5
    with pytest.raises(BadRequestsError) as caught:
        client.send(body)
    (error,) = errors_of(caught.value)
    assert error["field"] == "personalizations.1.to.0.email"
    assert error["message"] == "Invalid type. Expected: string, given: integer."


def test_top_level_custom_args_must_be_an_object_despite_the_openapi_file(client: SendGridAPIClient) -> None:
    body = raw_body(1)
    body["custom_args"] = "a string"
    with pytest.raises(BadRequestsError) as caught:
        client.send(body)
    assert errors_of(caught.value)[0] == {
        "message": "Invalid type. Expected: object, given: string.",
        "field": "custom_args",
        "help": {"keyword": "type", "schema_path": "properties/custom_args/type"},
    }
    body["custom_args"] = {"campaign": "weekly"}
    assert client.send(body).status_code == 202


@pytest.mark.parametrize(
    ("change", "field", "message_start"),
    [
        (lambda b: b.pop("content"), "content", "Unless a valid template_id is provided"),
        (lambda b: b["content"].reverse(), "content", "If present, text/plain must be first"),
        (lambda b: b.pop("subject"), "subject", "The subject is required"),
        (
            lambda b: b["personalizations"][0].update(to=[]),
            "personalizations.0.to",
            "The to parameter is required",
        ),
        (lambda b: b.update(personalizations=[]), "personalizations", "You must have at least one"),
        (
            lambda b: b.update(headers={"Reply-To": "x@example.com"}),
            "headers.Reply-To",
            "The header Reply-To",
        ),
        (
            lambda b: b["personalizations"][0]["to"][0].update(name="Doe, Jane"),
            "personalizations.0.to.0.name",
            "The",
        ),
        (lambda b: b.update(send_at=int(time.time()) + 73 * 3600), "send_at", "A send cannot be scheduled"),
        (
            lambda b: b.update(reply_to={"email": "r@example.com"}, reply_to_list=[]),
            "reply_to_list",
            "You can use",
        ),
    ],
)
def test_documented_rules_beyond_the_schema(
    client: SendGridAPIClient, change: Any, field: str, message_start: str
) -> None:
    body = raw_body(1)
    change(body)
    with pytest.raises(BadRequestsError) as caught:
        client.send(body)
    (error,) = errors_of(caught.value)
    assert error["field"] == field
    assert error["message"].startswith(message_start)


def test_template_sends_need_neither_subject_nor_content(client: SendGridAPIClient) -> None:
    body = raw_body(1)
    del body["subject"], body["content"]
    body["template_id"] = "d-0123456789abcdef0123456789abcdef"
    assert client.send(body).status_code == 202


def test_bad_addresses_are_rejected_with_the_field_so_callers_can_isolate_them(
    standin: SendGridStandIn, client: SendGridAPIClient
) -> None:
    readers = ["r0@example.com", "bounce-me@example.com", "r2@example.com"]
    with pytest.raises(BadRequestsError) as caught:
        client.send(mail_with([personalization(a, n) for n, a in enumerate(readers)]))
    assert errors_of(caught.value) == [
        {
            "message": "Does not contain a valid address.",
            "field": "personalizations.1.to.0.email",
            "help": None,
        }
    ]
    assert standin.emails_accepted == 0

    bad_index = int(errors_of(caught.value)[0]["field"].split(".")[1])
    good = [a for n, a in enumerate(readers) if n != bad_index]
    assert client.send(mail_with([personalization(a, n) for n, a in enumerate(good)])).status_code == 202
    assert standin.recipient_counts() == {"r0@example.com": 1, "r2@example.com": 1}

    standin.configure(bad_addresses=["r2@example.com"])
    with pytest.raises(BadRequestsError):
        client.send(mail_with([personalization("r2@example.com")]))
    assert client.send(mail_with([personalization("bounce-me@example.com")])).status_code == 202


def test_malformed_addresses_are_rejected_like_bad_ones(client: SendGridAPIClient) -> None:
    body = raw_body(2)
    body["personalizations"][1]["to"][0]["email"] = "not-an-address"
    body["from"]["email"] = "alerts@nowhere"
    with pytest.raises(BadRequestsError) as caught:
        client.send(body)
    assert [(e["field"], e["message"]) for e in errors_of(caught.value)] == [
        ("from.email", "Does not contain a valid address."),
        ("personalizations.1.to.0.email", "Does not contain a valid address."),
    ]


def test_auth_is_required(standin: SendGridStandIn) -> None:
    anonymous = SendGridAPIClient(api_key="SG.unused", host=standin.url)
    del anonymous.client.request_headers["Authorization"]
    with pytest.raises(UnauthorizedError) as caught:
        anonymous.send(raw_body(1))
    assert caught.value.status_code == 401
    assert errors_of(caught.value) == [{"message": "authorization required", "field": None, "help": None}]

    for header in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer "}):
        status, _, body = post(standin.url + "/v3/mail/send", json.dumps(raw_body(1)).encode(), header)
        assert status == 401
        assert json.loads(body)["errors"][0]["message"] == "authorization required"

    standin.configure(api_keys=["SG.right"])
    with pytest.raises(UnauthorizedError):
        SendGridAPIClient(api_key="SG.wrong", host=standin.url).send(raw_body(1))
    assert SendGridAPIClient(api_key="SG.right", host=standin.url).send(raw_body(1)).status_code == 202
    assert standin.stats()["responses_by_status"] == {"202": 1, "401": 5}


def test_oversize_bodies_get_413() -> None:
    with SendGridStandIn(max_body_bytes=2000) as sg:
        client = SendGridAPIClient(api_key="SG.test", host=sg.url)
        with pytest.raises(HTTPError) as caught:
            client.send(raw_body(30))
        assert caught.value.status_code == 413
        assert client.send(raw_body(1)).status_code == 202  # the connection state survived


def test_chunked_bodies_on_a_keep_alive_connection(standin: SendGridStandIn) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=10)
    headers = {"Authorization": "Bearer SG.x", "Content-Type": "application/json"}
    for n in range(2):
        data = json.dumps(raw_body(2, domain=f"d{n}.example.com")).encode()
        connection.request("POST", "/v3/mail/send", body=iter([data[:100], data[100:]]), headers=headers)
        response = connection.getresponse()
        assert (response.status, response.read()) == (202, b"")
    connection.close()
    assert standin.stats()["distinct_recipients"] == 4


def test_other_content_types_get_415(standin: SendGridStandIn) -> None:
    data = json.dumps(raw_body(1)).encode()
    status, _, _ = post(
        standin.url + "/v3/mail/send", data, {"Authorization": "Bearer k", "Content-Type": "text/plain"}
    )
    assert status == 415
    charset = {"Authorization": "Bearer k", "Content-Type": "application/json; charset=utf-8"}
    assert post(standin.url + "/v3/mail/send", data, charset)[0] == 202


def test_unknown_paths_and_methods(standin: SendGridStandIn) -> None:
    status, _, body = post(standin.url + "/v3/mail/batch", b"{}", {"Authorization": "Bearer SG.x"})
    assert (status, json.loads(body)["errors"][0]["message"]) == (404, "not found")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(standin.url + "/v3/mail/send", timeout=10)
    assert caught.value.code == 405


# -- faults ----------------------------------------------------------------------------------------


def test_injected_429_carries_retry_after(standin: SendGridStandIn, client: SendGridAPIClient) -> None:
    standin.fail_next(1, 429, retry_after_s=7)
    with pytest.raises(TooManyRequestsError) as caught:
        client.send(raw_body(1))
    headers = caught.value.headers
    assert headers["Retry-After"] == "7"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) >= int(time.time()) + 6
    assert errors_of(caught.value)[0]["message"] == "too many requests"
    assert standin.emails_accepted == 0

    assert client.send(raw_body(1)).status_code == 202  # only the next one failed
    assert standin.stats()["faults_injected"] == {"fail_next": 1}


def test_rate_based_429_and_server_errors() -> None:
    with SendGridStandIn(faults=FaultConfig(rate_429=1.0, retry_after_s=3)) as sg:
        client = SendGridAPIClient(api_key="SG.test", host=sg.url)
        with pytest.raises(TooManyRequestsError) as caught:
            client.send(raw_body(1))
        assert caught.value.headers["Retry-After"] == "3"
        sg.configure(rate_429=0.0, rate_500=1.0)
        with pytest.raises(InternalServerError):
            client.send(raw_body(1))
        sg.configure(rate_500=0.0, rate_503=1.0)
        with pytest.raises(ServiceUnavailableError):
            client.send(raw_body(1))
        assert sg.emails_accepted == 0
        assert sg.stats()["faults_injected"] == {"429": 1, "500": 1, "503": 1}


def test_fail_next_k_with_a_status(standin: SendGridStandIn, client: SendGridAPIClient) -> None:
    standin.fail_next(2, 503)
    for _ in range(2):
        with pytest.raises(ServiceUnavailableError):
            client.send(raw_body(1))
    assert client.send(raw_body(1)).status_code == 202
    assert standin.count_for("user0@example.com") == 1


def test_fault_draws_are_deterministic_with_a_seed() -> None:
    def statuses(seed: int) -> list[int]:
        faults = FaultConfig(rate_429=0.2, rate_500=0.2, rate_503=0.2)
        with SendGridStandIn(faults=faults, seed=seed) as sg:
            data = json.dumps(raw_body(1)).encode()
            return [post(sg.url + "/v3/mail/send", data, {"Authorization": "Bearer k"})[0] for _ in range(30)]

    first = statuses(7)
    assert first == statuses(7)
    assert set(first) == {202, 429, 500, 503}


def test_timeout_accepts_and_records_after_the_client_gave_up(
    standin: SendGridStandIn, client: SendGridAPIClient
) -> None:
    standin.configure(rate_timeout=1.0, timeout_delay_s=1.5)
    send = client.client.mail.send
    body = mail_with([personalization("eve@example.com")]).get()
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        send.post(request_body=body, timeout=0.3)
    assert time.monotonic() - started < 1.4
    assert standin.count_for("eve@example.com") == 0  # not yet: the stand-in is still "slow"
    assert standin.wait_idle(timeout=5)
    assert standin.count_for("eve@example.com") == 1  # ... but it did accept it: the ambiguous case
    assert standin.stats()["faults_injected"] == {"timeout": 1}


def test_timeout_can_drop_instead(standin: SendGridStandIn, client: SendGridAPIClient) -> None:
    standin.configure(timeout_delay_s=0.6, timeout_accepts=False)
    standin.fail_next(1, "timeout")
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        client.client.mail.send.post(request_body=raw_body(1), timeout=0.2)
    assert standin.wait_idle(timeout=5)
    assert standin.emails_accepted == 0
    assert client.send(raw_body(1)).status_code == 202


def test_reset_forgets_traffic_and_faults(standin: SendGridStandIn, client: SendGridAPIClient) -> None:
    client.send(raw_body(2))
    standin.fail_next(5, 500)
    standin.reset()
    assert standin.stats()["requests_total"] == 0
    assert standin.recipient_counts() == {}
    assert client.send(raw_body(1)).status_code == 202


def test_record_bodies_off_keeps_counts_and_custom_args_only() -> None:
    with SendGridStandIn(record_bodies=False) as sg:
        SendGridAPIClient(api_key="SG.test", host=sg.url).send(raw_body(3))
        assert sg.personalizations == []
        assert sg.requests == []
        assert sg.count_for("user2@example.com") == 1
        assert sg.custom_arg_counts("delivery_id") == {"d-0": 1, "d-1": 1, "d-2": 1}


# -- the validator itself --------------------------------------------------------------------------


def _variants() -> list[tuple[dict[str, Any], bool]]:
    """(body, valid?) pairs that exercise the schema and every rule."""
    base = raw_body(4)
    out = [(base, True)]

    def v(change: Any, valid: bool = False) -> None:
        body = copy.deepcopy(base)
        change(body)
        out.append((body, valid))

    v(lambda b: b.pop("from"))
    v(lambda b: b["personalizations"][1]["to"][0].update(email=5))
    v(lambda b: b["personalizations"][2].pop("to"))
    v(lambda b: b.update(categories=["a", "a"]))
    v(lambda b: b.update(asm={"groups_to_display": [1]}))
    v(lambda b: b.update(attachments=[{"content": "!!", "filename": "a.txt"}]))
    v(lambda b: b.update(attachments=[{"content": "aGk=", "filename": "a.txt", "disposition": "inline"}]))
    v(lambda b: b.update(attachments=[{"content": "aGk=", "filename": "a.txt", "disposition": "sideways"}]))
    v(
        lambda b: b.update(attachments=[{"content": "aGk=", "filename": "a.txt", "content_id": "x"}]),
        valid=True,
    )
    v(lambda b: b["personalizations"][3].update(cc=[{"email": "USER0@example.com"}]))
    v(lambda b: b["personalizations"][3].update(bcc=[{"email": "user3@example.com"}]))
    v(lambda b: b["personalizations"][3].update(cc=[{"email": "x@example.com", "name": "A; B"}]))
    v(lambda b: b["personalizations"][3].update(cc=[{"email": "x@example.com", "name": "A B"}]), valid=True)
    v(lambda b: b["personalizations"][0].update(headers={"to": "x"}))
    v(lambda b: b["personalizations"][0].update(headers={"X-Count": 3}))
    v(lambda b: b["personalizations"][0].update(custom_args={"n": 1}))
    v(lambda b: b["personalizations"][0].update(custom_args={"n": "x" * MAX_CUSTOM_ARGS_BYTES}))
    v(lambda b: b["personalizations"][0].update(custom_args={"n": "x" * 9000}), valid=True)
    v(lambda b: b["personalizations"][0].update(substitutions={"-s-": "\x00" * 1700}))
    v(lambda b: b["personalizations"][0].update(substitutions={"-s-": "y" * 1700}), valid=True)
    # many short values: over the limit together, or under it by a margin the quick size bound cannot see
    v(lambda b: b["personalizations"][1].update(substitutions={f"-s{i}-": "y" * 300 for i in range(40)}))
    v(lambda b: b["personalizations"][1].update(substitutions={f"-s{i}-": "y" * 300 for i in range(20)}), True)
    v(lambda b: b["personalizations"][2].update(custom_args={f"a{i}": "z" * 300 for i in range(40)}))
    v(lambda b: b["personalizations"][2].update(custom_args={f"a{i}": "z" * 300 for i in range(20)}), True)
    v(
        lambda b: (
            b.update(custom_args={"t": "t" * 5000}),
            b["personalizations"][2].update(custom_args={"u": "u" * 5000}),
        )
    )
    v(lambda b: b["personalizations"][0].update({"from": {"email": "bounce-me@example.com"}}))
    v(lambda b: b["personalizations"][0].update({"from": {"email": "ok@example.com"}}), valid=True)
    v(lambda b: b["personalizations"][0].update(send_at=2**40))
    v(lambda b: b["personalizations"][0].update(send_at=1), valid=True)
    v(lambda b: b["personalizations"][0]["to"][0].update(email="nope@"))
    v(lambda b: b["personalizations"][0]["to"][0].update(email="bounce-me@example.com"))
    v(lambda b: b.update(personalizations=b["personalizations"] * 300))
    return out


def test_the_two_schema_engines_agree() -> None:
    pytest.importorskip("jsonschema_rs")
    reference = MailSendValidator(engine="jsonschema")
    fast = MailSendValidator(engine="jsonschema_rs")
    bad = frozenset({"bounce-me@example.com"})
    for n, (body, valid) in enumerate(_variants()):
        outcome = reference.validate(body, bad)
        assert outcome == fast.validate(body, bad), n
        assert (outcome == []) is valid, (n, outcome)


def test_the_fast_personalization_screen_never_hides_an_error() -> None:
    validator = MailSendValidator.shared()
    bad = frozenset({"bounce-me@example.com"})
    assert validator._personalizations_surely_fine(raw_body(1000), bad)  # the fast path is the usual path
    for body, _ in _variants():
        if validator.schema_errors(body):
            continue
        detailed: list[dict[str, Any]] = []
        validator._personalization_errors(body, bad, detailed.append)
        if detailed:
            assert not validator._personalizations_surely_fine(body, bad), detailed


def test_check_returns_the_lowercased_recipients_of_a_valid_body() -> None:
    validator = MailSendValidator.shared()
    body = raw_body(3)
    body["personalizations"][0]["to"][0]["email"] = "User0@Example.COM"
    body["personalizations"][1]["cc"] = [{"email": "CC@example.com"}]
    body["personalizations"][2]["bcc"] = [{"email": "Bcc@example.com"}]
    expected = [f"user{i}@example.com" for i in range(3)] + ["cc@example.com", "bcc@example.com"]
    assert validator._personalizations_surely_fine(body, frozenset())
    assert validator.check(body) == ([], expected)
    body["personalizations"][1]["from"] = {"email": "other@example.com"}  # takes the detailed pass
    assert not validator._personalizations_surely_fine(body, frozenset())
    assert validator.check(body) == ([], expected)
    body["personalizations"][1]["cc"][0]["email"] = "USER2@example.com"
    errors, recipients = validator.check(body)
    assert errors and recipients == []


def test_the_one_match_address_check_agrees_with_the_address_pattern() -> None:
    def agree(addresses: list[str]) -> None:
        assert _all_valid_addresses(addresses) == all(map(_EMAIL_RE.match, addresses)), addresses

    agree([])
    bases = ["a@b.co", "first.last@mail.example.org"]
    for char in [chr(code) for code in range(128)] + ["\xa0", "\u2028", "é", "\U0001f600"]:
        for base in bases:
            for at in range(len(base) + 1):
                for address in (base[:at] + char + base[at:], base[:at] + char + base[at + 1 :]):
                    agree([address])
                    agree([address, "q@r.st"])
                    agree(["q@r.st", address, "x@y.zz"])
    for odd in ["a@b.co\n", "a@b.co\nc@d.co", "\na@b.co", "", "a@b.c", "a@b..co", ".a@b.co", "a.@b.co"]:
        agree([odd])
        agree(["q@r.st", odd])


# -- event webhook signing -------------------------------------------------------------------------


def test_header_names_match_the_sendgrid_library() -> None:
    assert SIGNATURE_HEADER == EventWebhookHeader.SIGNATURE
    assert TIMESTAMP_HEADER == EventWebhookHeader.TIMESTAMP


def test_signed_webhooks_verify_with_the_official_event_webhook_helper() -> None:
    private_key, public_key = generate_webhook_keypair()
    payload = json.dumps([{"email": "ann@example.com", "event": "bounce", "sg_message_id": "abc.1"}]).encode()
    headers = sign_webhook(private_key, payload, "1700000000")
    assert headers[TIMESTAMP_HEADER] == "1700000000"

    verifier = EventWebhook(public_key)
    signature = headers[SIGNATURE_HEADER]
    assert verifier.verify_signature(payload.decode(), signature, "1700000000")
    assert not verifier.verify_signature(payload.decode().replace("bounce", "open"), signature, "1700000000")
    assert not verifier.verify_signature(payload.decode(), signature, "1700000001")
    _, other_public_key = generate_webhook_keypair()
    assert not EventWebhook(other_public_key).verify_signature(payload.decode(), signature, "1700000000")
    assert sign_webhook(private_key, payload)[TIMESTAMP_HEADER].isdigit()


def test_sendgrid_published_test_vector_verifies() -> None:
    v = SENDGRID_TEST_VECTOR
    assert EventWebhook(v["public_key"]).verify_signature(v["payload"], v["signature"], v["timestamp"])
    verify = EventWebhook(v["public_key"]).verify_signature
    assert not verify(v["payload"], v["bad_signature"], v["timestamp"])
    assert not verify(v["payload"].rstrip(), v["signature"], v["timestamp"])
    other = EventWebhook(v["other_public_key"])
    assert not other.verify_signature(v["payload"], v["signature"], v["timestamp"])


# -- control API and separate process --------------------------------------------------------------


def test_control_api_in_process(standin: SendGridStandIn, client: SendGridAPIClient) -> None:
    client.send(raw_body(2))
    with urllib.request.urlopen(standin.url + "/_standin/stats?recipients=1&custom_arg=delivery_id") as r:
        stats = json.loads(r.read())
    assert stats["recipients"] == {"user0@example.com": 1, "user1@example.com": 1}
    assert stats["custom_arg_counts"]["distinct"] == 2
    status, _, body = post(standin.url + "/_standin/config", json.dumps({"rate_500": 2}).encode())
    assert status == 400
    status, _, body = post(standin.url + "/_standin/config", json.dumps({"rate_500": 1}).encode())
    assert (status, json.loads(body)["faults"]["rate_500"]) == (200, 1)
    with pytest.raises(InternalServerError):
        client.send(raw_body(1))
    assert post(standin.url + "/_standin/reset", b"")[0] == 200
    assert standin.stats()["requests_total"] == 0


def test_runs_as_a_separate_process(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    args = ["--no-record-bodies", "--bad-address", "bounce-me@example.com", "--state-file", str(state_file)]
    with StandInProcess(args) as process:
        client = SendGridAPIClient(api_key="SG.test", host=process.url)
        mail = mail_with([personalization(f"p{n}@example.com", n) for n in range(3)])
        assert client.send(mail).status_code == 202
        with pytest.raises(BadRequestsError):
            client.send(mail_with([personalization("bounce-me@example.com")]))

        stats = process.stats(recipients=True, custom_arg_key="delivery_id")
        assert stats["requests_total"] == 2
        assert stats["recipients_accepted"] == 3
        assert stats["recipients"] == {"p0@example.com": 1, "p1@example.com": 1, "p2@example.com": 1}
        assert stats["custom_arg_counts"]["distinct"] == 3
        assert stats["config"]["record_bodies"] is False

        process.fail_next(1, 429, retry_after_s=2)
        with pytest.raises(TooManyRequestsError) as caught:
            client.send(raw_body(1))
        assert caught.value.headers["Retry-After"] == "2"
        assert process.configure(rate_503=1.0)["faults"]["rate_503"] == 1.0
        with pytest.raises(ServiceUnavailableError):
            client.send(raw_body(1))
        process.configure(rate_503=0.0)
        process.reset()
        assert process.stats()["requests_total"] == 0
        client.send(raw_body(1))
    assert process.process is None
    final = json.loads(state_file.read_text())
    assert final["recipients"] == {"user0@example.com": 1}
