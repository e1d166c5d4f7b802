"""A local stand-in for SendGrid's v3 Mail Send API, for tests and benchmarks.

`SendGridStandIn` is a small `ThreadingHTTPServer` on 127.0.0.1 (ephemeral port by default) that implements
`POST /v3/mail/send` the way the real service answers it:

* every body is validated against the request-body schema of SendGrid's official OpenAPI 3.1 description
  (`tests/fixtures/sendgrid/tsg_mail_v3.json`, a JSON Schema 2020-12 document; `$ref`s are resolved over the
  whole document through a `referencing` registry), then against SendGrid's documented rules that a schema
  cannot express (limits on personalizations and recipients, duplicate addresses, the 10,000-byte limits on
  substitutions and custom_args, subject/content requirements, reserved headers, ...);
* `Authorization: Bearer <key>` is required (401 otherwise);
* a valid request gets `202`, an empty body and a unique `X-Message-Id`; an invalid one gets `400` with
  SendGrid's error shape `{"errors": [{"message": ..., "field": ..., "help": ...}]}`;
* every accepted personalization is recorded (per-recipient counts, custom_args, and optionally the whole
  personalization and request);
* faults can be injected, deterministically with a seed: 429 (with `Retry-After`/`X-RateLimit-Reset`),
  500/503, "timeouts" (sleep past the client's timeout, then accept-and-record or drop) and "fail the next K
  requests with status S".

Use it in-process (`with SendGridStandIn() as sg: ...`) or as a separate process, which keeps it off the
test's GIL (benchmarks)::

    python -m tests.support.sendgrid_standin --port 0 --no-record-bodies --state-file var/sg.json

prints its URL on stdout line 1 and serves a small control API: `GET /_standin/stats`, `GET /_standin/health`,
`POST /_standin/reset`, `POST /_standin/config`, `POST /_standin/fail_next`, `POST /_standin/shutdown`.
`StandInProcess` starts and drives such a process.

The module also signs event-webhook payloads the way SendGrid does (`generate_webhook_keypair`,
`sign_webhook`) and carries SendGrid's published signature test vector (`SENDGRID_TEST_VECTOR`).

Rules enforced beyond the schema (SendGrid's "Limitations" and "Errors" pages): at least 1 and at most 1000
personalizations; at most 1000 recipients (to + cc + bcc) per request; every personalization has a `to`; no
address twice in a request (case-insensitive, across to/cc/bcc and personalizations); addresses look valid
and are not in `bad_addresses` ("Does not contain a valid address.", field `personalizations.N.to.M.email`);
names without `;` or `,`; substitutions <= 10,000 bytes per personalization and custom_args (message-level
merged with the personalization's) <= 10,000 bytes, both measured as compact UTF-8 JSON; custom_args and
header values are strings; no reserved headers; send_at at most 72 h ahead; a subject and content unless
`template_id` is set, text/plain first and then text/html; reply_to xor reply_to_list; base64 attachments;
bodies over 30,000,000 bytes get 413, a Content-Type other than application/json gets 415. Bodies may be
gzip-encoded (`Content-Encoding: gzip`) or chunked.

Schema validity is decided by `jsonschema_rs` when it is importable (schemathesis brings it; it is ~200x
faster, which a benchmark of 1000-personalization requests needs) and errors are always described by
`jsonschema`'s `Draft202012Validator`; `schema_engine="jsonschema"` uses only the latter.

Deliberate deviation from the OpenAPI file (see `SCHEMA_PATCHES`): the file types the top-level
`custom_args` as a string, but the live API rejects a string ("Invalid type. Expected: object, given:
string.") and every official helper library sends an object, so the stand-in requires an object there.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gc
import gzip
import json
import math
import operator
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, NamedTuple, Self, cast
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = [
    "MAIL_SEND_PATH",
    "SENDGRID_TEST_VECTOR",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "FaultConfig",
    "MailSendValidator",
    "RecordedPersonalization",
    "RecordedRequest",
    "SendGridStandIn",
    "StandInProcess",
    "generate_webhook_keypair",
    "main",
    "sign_webhook",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
OPENAPI_PATH = REPO_ROOT / "tests" / "fixtures" / "sendgrid" / "tsg_mail_v3.json"
OPENAPI_URI = "urn:sendgrid-oas:tsg_mail_v3.json"
REQUEST_SCHEMA_POINTER = "/components/requestBodies/PostMailSend/content/application~1json/schema"
MAIL_SEND_PATH = "/v3/mail/send"
CONTROL_PREFIX = "/_standin/"

# SendGrid's documented limits (Mail Send reference, "Limitations" and "Errors" pages).
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000  # to + cc + bcc across all personalizations of one request
MAX_SUBSTITUTIONS_BYTES = 10_000  # per personalization
MAX_CUSTOM_ARGS_BYTES = 10_000  # personalization custom_args merged over the top-level ones
MAX_BODY_BYTES = 30_000_000  # "must be less than 30MB"
MAX_SEND_AT_AHEAD_S = 72 * 3600
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "Content-Type",
        "Content-Transfer-Encoding",
        "To",
        "From",
        "Subject",
        "Reply-To",
        "CC",
        "BCC",
    )
)
SCHEMA_PATCHES = ("top-level custom_args: type string -> object (the live API only accepts an object)",)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# SendGrid's own event-webhook signature test vector, from sendgrid-python (MIT),
# test/unit/test_eventwebhook.py. The payload is json.dumps(events, sort_keys=True, separators=(",", ":"))
# followed by "\r\n" - the trailing CRLF is part of what SendGrid signs.
_SIG = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
_SIG_BAD = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0="
SENDGRID_TEST_VECTOR: dict[str, str] = {
    "public_key": (
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7"
        "dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVp"
        "iglSI8eNEc6wEA3F+g=="
    ),
    "signature": _SIG,
    "timestamp": "1600112502",
    "payload": (
        '[{"email":"hello@world.com","event":"dropped","reason":"Bounced Address",'
        '"sg_event_id":"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",'
        '"sg_message_id":"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",'
        '"smtp-id":"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>","timestamp":1600112492}]\r\n'
    ),
    # From the same test file: a signature that does not match the payload, and a key that did not sign it.
    "bad_signature": _SIG_BAD,
    "other_public_key": (
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQr"
        "Ibsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7G"
        "jUuFDb/R1NGe1OPzpA=="
    ),
    "source": "https://github.com/sendgrid/sendgrid-python/blob/main/test/unit/test_eventwebhook.py",
}

ErrorItem = dict[str, Any]
Body = dict[str, Any]
Add = Callable[[ErrorItem], None]
SchemaEngine = Literal["auto", "jsonschema", "jsonschema_rs"]

_EMAIL_RE = re.compile(r'^[^@\s<>(),;:"\[\]\\]+@(?:[^@\s<>(),;:"\[\]\\.]+\.)+[^@\s<>(),;:"\[\]\\.]{2,}$')


def _address_shapes_table() -> bytes:
    """A `bytes.translate` table that maps an ASCII address to its shape, one byte per character: "a" for a
    character `_EMAIL_RE` allows everywhere, "." and "@" for themselves, "!" for one it allows nowhere - as
    `_EMAIL_RE` itself classifies them. Newline (which it allows nowhere) stays, to separate addresses."""
    table = bytearray(b"!" * 256)
    for code in range(128):
        c = chr(code)
        in_local = _EMAIL_RE.match(c + "@b.cd") is not None
        in_label = _EMAIL_RE.match("a@b" + c + ".cd") is not None
        if c in ".@\n":
            assert (in_local, in_label) == (c == ".", False), c
            table[code] = code
        elif in_local and in_label:
            table[code] = ord("a")
        else:
            assert not in_local and not in_label, c
    return bytes(table)


_ADDRESS_SHAPES = _address_shapes_table()
# Lines of address shapes: a line matches exactly if its address matches `_EMAIL_RE` (a local part of "a" and
# ".", "@", labels of "a" each followed by ".", a last label of 2+ "a"). Possessive quantifiers: a line can be
# matched in one way only, so backtracking could not change the answer, only slow down a mismatch.
_ADDRESS_SHAPES_RE = re.compile(rb"(?:[a.]++@(?:a++\.)++a{2,}+\n)*+[a.]++@(?:a++\.)++a{2,}+")
_STR_ONLY = frozenset({str})
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_JSON_TYPES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}
_INVALID_ADDRESS = "Does not contain a valid address."
_TOO_MANY_RECIPIENTS = "There is a limit of 1000 total recipients (to + cc + bcc) per request."
_CONTENT_ORDER_ERROR_MESSAGE = (
    "If present, text/plain must be first, followed by text/html, followed by any other content."
)
_REQUIRED_MESSAGES = {
    "from": (
        "The from object must be provided for every email send. It is an object that requires the email "
        "parameter, but may also contain a name parameter."
    ),
    "personalizations": "The personalizations field is required and must have at least one personalization.",
    "to": "The to parameter is required for all personalization objects.",
}


def _err(message: str, field: str | None = None, help: Any = None) -> ErrorItem:
    return {"message": message, "field": field, "help": help}


def _errors_body(errors: list[ErrorItem]) -> bytes:
    return json.dumps({"errors": errors}).encode()


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _json_size(value: Any) -> int:
    """Bytes of the compact UTF-8 JSON encoding - how the stand-in measures the 10,000-byte limits."""
    text = _COMPACT_JSON.encode(value)
    return len(text) if text.isascii() else len(text.encode())


def _json_size_over(values: dict[str, Any], limit: int) -> int:
    """`_json_size(values)` if it exceeds `limit`, else 0 - cheaply for the usual small string->string dict.

    A JSON-escaped character takes at most 6 bytes, so 6 * (characters + 1 per item) + 2 bounds the size.
    """
    if _STR_ONLY.issuperset(map(type, values.values())):
        bound = 6 * (sum(map(len, values)) + sum(map(len, values.values())) + len(values)) + 2
        if bound <= limit:
            return 0
    size = _json_size(values)
    return size if size > limit else 0


def _message_id() -> str:
    """A SendGrid-looking X-Message-Id: 22 url-safe base64 characters."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def load_openapi(path: Path = OPENAPI_PATH) -> dict[str, Any]:
    """The official OpenAPI document with `SCHEMA_PATCHES` applied (cached; treat as read-only)."""
    doc: dict[str, Any] = json.loads(path.read_text("utf-8"))
    schema = doc["components"]["requestBodies"]["PostMailSend"]["content"]["application/json"]["schema"]
    custom_args = schema["properties"]["custom_args"]
    if custom_args.get("type") == "string":
        custom_args["type"] = "object"
    return doc


def request_body_schema(path: Path = OPENAPI_PATH) -> dict[str, Any]:
    """The (patched) request-body schema of POST /v3/mail/send, `$ref`s left in place."""
    schema: dict[str, Any] = load_openapi(path)["components"]["requestBodies"]["PostMailSend"]["content"][
        "application/json"
    ]["schema"]
    return schema


class MailSendValidator:
    """Validates a decoded `/v3/mail/send` body; returns SendGrid-shaped error items (empty list = valid).

    The schema is compiled once. `engine="auto"` decides validity with `jsonschema_rs` when it is importable
    (about 200 times faster on a 1000-personalization body, which a benchmark needs), and always describes
    errors with `jsonschema`'s `Draft202012Validator`; `engine="jsonschema"` uses `jsonschema` only.
    Both are built without format checking: addresses are checked by the rules pass, with SendGrid's message.
    """

    def __init__(
        self,
        *,
        openapi_path: Path = OPENAPI_PATH,
        engine: SchemaEngine = "auto",
        max_errors: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        doc = load_openapi(openapi_path)
        root = {"$ref": f"{OPENAPI_URI}#{REQUEST_SCHEMA_POINTER}"}
        Draft202012Validator.check_schema(request_body_schema(openapi_path))
        registry: Registry[Any] = Registry().with_resource(OPENAPI_URI, DRAFT202012.create_resource(doc))
        self._validator = Draft202012Validator(root, registry=registry)
        self._fast: Any = None
        if engine in ("auto", "jsonschema_rs"):
            try:
                import jsonschema_rs
            except ImportError:
                if engine == "jsonschema_rs":
                    raise
            else:
                self._fast = jsonschema_rs.Draft202012Validator(
                    root,
                    registry=jsonschema_rs.Registry([(OPENAPI_URI, doc)], draft=jsonschema_rs.Draft202012),
                    validate_formats=False,
                )
        self.engine: str = "jsonschema_rs" if self._fast is not None else "jsonschema"
        self.max_errors = max_errors
        self._clock = clock

    @classmethod
    @lru_cache(maxsize=4)
    def shared(cls, engine: SchemaEngine = "auto") -> MailSendValidator:
        """One compiled validator per engine, shared by every stand-in of the process."""
        return cls(engine=engine)

    def validate(self, body: Any, bad_addresses: Iterable[str] = frozenset()) -> list[ErrorItem]:
        """Schema errors if any, else the errors of SendGrid's documented rules."""
        return self.check(body, bad_addresses)[0]

    def check(self, body: Any, bad_addresses: Iterable[str] = frozenset()) -> tuple[list[ErrorItem], list[str]]:
        """`validate()`, and for a valid body its recipients as the stand-in counts them: the addresses of
        every to, then every cc, then every bcc list, lowercased (the rules have collected them anyway)."""
        if self._fast is None or not self._fast.is_valid(body):
            errors = self.schema_errors(body)
            if errors:
                return errors, []
            if self._fast is not None:  # the engines disagree: trust the stricter one, say what it says
                return [
                    _err(e.message[:300], ".".join(map(str, e.instance_path)) or None)
                    for e in list(self._fast.iter_errors(body))[: self.max_errors]
                ], []
        bad = bad_addresses if isinstance(bad_addresses, frozenset) else frozenset(bad_addresses)
        return self._rule_errors(body, bad)

    def schema_errors(self, body: Any) -> list[ErrorItem]:
        """Errors against the official request-body schema (jsonschema, Draft 2020-12)."""
        found = sorted(self._validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
        return [_describe_schema_error(e) for e in found[: self.max_errors]]

    def rule_errors(self, body: Body, bad_addresses: frozenset[str] = frozenset()) -> list[ErrorItem]:
        """SendGrid's documented rules beyond the schema. Assumes `body` already passed the schema."""
        return self._rule_errors(body, bad_addresses)[0]

    def _rule_errors(self, body: Body, bad_addresses: frozenset[str]) -> tuple[list[ErrorItem], list[str]]:
        """`rule_errors()` and, when there are none, the lowercased recipients (see `check()`)."""
        errors: list[ErrorItem] = []
        personalizations: list[Body] = body["personalizations"]
        keys = _keys(personalizations)
        lists = _recipient_lists(personalizations, keys)
        self._message_errors(body, bad_addresses, errors.append, lists)
        recipients = self._screen_personalizations(body, bad_addresses, keys, lists)
        if recipients is None:
            self._personalization_errors(body, bad_addresses, errors.append)
            people = chain.from_iterable(lists)
            recipients = [] if errors else list(map(str.lower, [person["email"] for person in people]))
        if errors:
            return errors[: self.max_errors], []
        return errors, recipients

    def _message_errors(
        self,
        body: dict[str, Any],
        bad_addresses: frozenset[str],
        add: Add,
        lists: list[list[Body]] | None = None,
    ) -> None:
        """Rules on the message as a whole (cheap: independent of the number of personalizations).
        `lists` are the personalizations' `_recipient_lists()`, if the caller has them already."""
        check_address = _address_checker(bad_addresses, add)
        check_address(body["from"]["email"], "from.email")
        if "reply_to" in body:
            check_address(body["reply_to"]["email"], "reply_to.email")
            if "reply_to_list" in body:
                add(
                    _err(
                        "You can use either the reply_to property or reply_to_list property but not both.",
                        "reply_to_list",
                    )
                )
        for j, reply_to in enumerate(body.get("reply_to_list") or ()):
            check_address(reply_to["email"], f"reply_to_list.{j}.email")
        if body.get("headers"):
            _check_headers(body["headers"], "headers", add)
        top_args: dict[str, Any] = body.get("custom_args") or {}
        if top_args:
            _check_string_values(top_args, "custom_args", add)
            size = _json_size_over(top_args, MAX_CUSTOM_ARGS_BYTES)
            if size:
                add(_err(_custom_args_message(size), "custom_args"))
        _check_send_at(body.get("send_at"), "send_at", self._clock(), add)

        personalizations: list[dict[str, Any]] = body["personalizations"]
        count = len(personalizations)
        if count == 0:
            add(_err("You must have at least one personalization.", "personalizations"))
        elif count > MAX_PERSONALIZATIONS:  # the schema's maxItems says so first; kept for engine parity
            add(_err(_too_many_personalizations(count), "personalizations"))
        ps = personalizations
        recipients = sum(map(len, _recipient_lists(ps) if lists is None else lists))
        if recipients > MAX_RECIPIENTS:
            add(_err(_TOO_MANY_RECIPIENTS, "personalizations"))

        templated = "template_id" in body
        if (
            not templated
            and "subject" not in body
            and not (count > 0 and all(["subject" in p for p in ps]))  # every personalization has a subject
        ):
            add(
                _err(
                    "The subject is required. You can get around this requirement if you use a template "
                    "with a subject defined or if every personalization has a subject defined.",
                    "subject",
                )
            )
        content: list[dict[str, Any]] = body.get("content") or []
        if not content and not templated:
            add(
                _err(
                    "Unless a valid template_id is provided, the content parameter is required. There "
                    "must be at least one defined content block.",
                    "content",
                )
            )
        types = [c["type"].lower() for c in content]
        if types.count("text/plain") > 1 or types.count("text/html") > 1:
            add(_err("If present, text/plain and text/html may only be provided once.", "content"))
        elif ("text/plain" in types and types[0] != "text/plain") or (
            "text/html" in types and types.index("text/html") != (1 if "text/plain" in types else 0)
        ):
            add(_err(_CONTENT_ORDER_ERROR_MESSAGE, "content"))
        for j, attachment in enumerate(body.get("attachments") or ()):
            try:
                base64.b64decode(attachment["content"], validate=True)
            except (binascii.Error, ValueError):
                add(_err("The attachment content must be base64 encoded.", f"attachments.{j}.content"))
            if attachment.get("disposition") == "inline" and not attachment.get("content_id"):
                add(
                    _err(
                        "The content_id parameter is required if disposition is set to inline.",
                        f"attachments.{j}.content_id",
                    )
                )

    @staticmethod
    def _personalizations_surely_fine(
        body: dict[str, Any],
        bad_addresses: frozenset[str],
        keys: set[str] | None = None,
        lists: list[list[Body]] | None = None,
    ) -> bool:
        """True only if `_personalization_errors` would find nothing (`_screen_personalizations` as a bool)."""
        screened = MailSendValidator._screen_personalizations(body, bad_addresses, keys, lists)
        return screened is not None

    @staticmethod
    def _screen_personalizations(
        body: dict[str, Any],
        bad_addresses: frozenset[str],
        keys: set[str] | None = None,
        lists: list[list[Body]] | None = None,
    ) -> list[str] | None:
        """A conservative screen made of C-level passes over all personalizations at once: the lowercased
        recipients (see `check()`) only if `_personalization_errors` would find nothing, else None. Keeps
        1000-personalization requests cheap. `keys`/`lists`: `_keys()`/`_recipient_lists()`, if known."""
        personalizations: list[dict[str, Any]] = body["personalizations"]
        if keys is None:
            keys = _keys(personalizations)
        if "from" in keys or "send_at" in keys:  # rare: leave them to the detailed pass
            return None
        if lists is None:
            lists = _recipient_lists(personalizations, keys)
        if not all(lists[: len(personalizations)]):  # the "to" lists come first
            return None
        people = list(chain.from_iterable(lists))
        addresses = [person["email"] for person in people]
        if not _all_valid_addresses(addresses):
            return None
        lowered = list(map(str.lower, addresses))
        distinct = set(lowered)
        if len(distinct) != len(lowered) or not bad_addresses.isdisjoint(distinct):
            return None
        names = "\n".join([person["name"] for person in people if "name" in person])
        if ";" in names or "," in names:
            return None
        if "headers" in keys:
            headers = [p["headers"] for p in personalizations if "headers" in p]
            if not RESERVED_HEADERS.isdisjoint(map(str.lower, set(chain.from_iterable(headers)))):
                return None
            if not _all_strings(list(chain.from_iterable(map(dict.values, headers)))):
                return None
        if "substitutions" in keys:
            substitutions = [p["substitutions"] for p in personalizations if "substitutions" in p]
            if (
                _strings_size_bound(substitutions) > MAX_SUBSTITUTIONS_BYTES
                and _repr_size_bound(substitutions) > MAX_SUBSTITUTIONS_BYTES
            ):
                return None
        if "custom_args" in keys:
            args = [p["custom_args"] for p in personalizations if "custom_args" in p]
            bound = _strings_size_bound(args)
            if bound == math.inf:  # a value that is not a string: an error the detailed pass describes
                return None
            # custom_args are measured merged over the top-level ones, which add at most their own size
            top = _repr_size_bound([body.get("custom_args") or {}])
            if top + bound > MAX_CUSTOM_ARGS_BYTES and top + _repr_size_bound(args) > MAX_CUSTOM_ARGS_BYTES:
                return None
        return lowered

    def _personalization_errors(self, body: dict[str, Any], bad_addresses: frozenset[str], add: Add) -> None:
        """Per-personalization rules, one error item per problem (the detailed, slower pass)."""
        check_address = _address_checker(bad_addresses, add)
        email_ok = _EMAIL_RE.match
        now = self._clock()
        top_args: dict[str, Any] = body.get("custom_args") or {}
        seen: dict[str, int] = {}
        for i, p in enumerate(body["personalizations"]):
            if not p["to"]:
                add(
                    _err(
                        "The to parameter is required for all personalization objects.",
                        f"personalizations.{i}.to",
                    )
                )
            for kind in ("to", "cc", "bcc"):
                for j, person in enumerate(p.get(kind) or ()):
                    address: str = person["email"]
                    low = address.lower()
                    if low in bad_addresses or not email_ok(address):
                        add(_err(_INVALID_ADDRESS, f"personalizations.{i}.{kind}.{j}.email"))
                    name = person.get("name")
                    if name and (";" in name or "," in name):
                        add(
                            _err(
                                f"The {kind}.name value cannot include either the ; or , characters.",
                                f"personalizations.{i}.{kind}.{j}.name",
                            )
                        )
                    first = seen.get(low)
                    if first is None:
                        seen[low] = i
                    elif first == i:
                        add(
                            _err(
                                "Each email address in the personalization block should be unique between "
                                f"to, cc, and bcc. We found the first duplicate instance of [{address}] in "
                                f"the personalizations.{i}.{kind} field.",
                                f"personalizations.{i}",
                            )
                        )
                    else:
                        add(
                            _err(
                                "Each unique email address in the personalizations array should only be "
                                f"included once. You have included [{address}] more than once "
                                f"(personalizations.{first} and personalizations.{i}.{kind}.{j}).",
                                f"personalizations.{i}",
                            )
                        )
            if "from" in p:
                check_address(p["from"]["email"], f"personalizations.{i}.from.email")
            if p.get("headers"):
                _check_headers(p["headers"], f"personalizations.{i}.headers", add)
            substitutions = p.get("substitutions")
            if substitutions:
                size = _json_size_over(substitutions, MAX_SUBSTITUTIONS_BYTES)
                if size:
                    add(
                        _err(
                            f"The total size of the substitutions of a personalization may not exceed "
                            f"{MAX_SUBSTITUTIONS_BYTES} bytes; this one has {size} bytes.",
                            f"personalizations.{i}.substitutions",
                        )
                    )
            args = p.get("custom_args")
            if args:
                _check_string_values(args, f"personalizations.{i}.custom_args", add)
                size = _json_size_over({**top_args, **args} if top_args else args, MAX_CUSTOM_ARGS_BYTES)
                if size:
                    add(_err(_custom_args_message(size), f"personalizations.{i}.custom_args"))
            if "send_at" in p:
                _check_send_at(p["send_at"], f"personalizations.{i}.send_at", now, add)


def _keys(personalizations: list[Body]) -> set[str]:
    """Every key that occurs in some personalization."""
    return set().union(*personalizations)


def _recipient_lists(personalizations: list[Body], keys: set[str] | None = None) -> list[list[Body]]:
    """The to lists of all personalizations, then their cc and bcc lists (C-level passes)."""
    lists = [p["to"] for p in personalizations]
    if keys is None:
        keys = _keys(personalizations)
    if "cc" in keys:
        lists += [p["cc"] for p in personalizations if "cc" in p]
    if "bcc" in keys:
        lists += [p["bcc"] for p in personalizations if "bcc" in p]
    return lists


def _all_valid_addresses(addresses: list[str]) -> bool:
    """`all(map(_EMAIL_RE.match, addresses))`; when the addresses are ASCII without newlines, in one match of
    their shapes (see `_address_shapes_table`), one per line."""
    joined = "\n".join(addresses)
    if joined.isascii() and joined.count("\n") == len(addresses) - 1:
        shapes = joined.encode("ascii").translate(_ADDRESS_SHAPES)
        return _ADDRESS_SHAPES_RE.fullmatch(shapes) is not None
    return all(map(_EMAIL_RE.match, addresses))


def _all_strings(values: list[Any]) -> bool:
    """Whether every value is a `str` (`str.join` accepts nothing else; one C-level pass)."""
    try:
        "".join(values)
    except TypeError:
        return False
    return True


def _strings_size_bound(dicts: list[dict[str, Any]]) -> float:
    """An upper bound of the largest `_json_size(d)` of `dicts` if all their values are strings, else inf.

    One such dict takes at most 2 + 6 * (items + characters) bytes (see `_json_size_over`), which is at most
    2 + 6 * n * (1 + k + v) with n, k and v the most items, the longest key and the longest value of any.
    """
    values = list(chain.from_iterable(map(dict.values, dicts)))
    if not values:
        return 2
    if not _all_strings(values):
        return math.inf
    most_items = max(map(len, dicts))
    longest_key = max(map(len, set(chain.from_iterable(dicts))))
    return 2 + 6 * most_items * (1 + longest_key + max(map(len, values)))


def _repr_size_bound(dicts: list[dict[str, Any]]) -> int:
    """An upper bound of the largest `_json_size(d)` of `dicts`, whatever their values: a JSON-escaped
    character takes at most 6 bytes and repr() spends at least one character on each."""
    return 6 * max(map(len, map(repr, dicts)), default=0)


def _address_checker(bad_addresses: frozenset[str], add: Add) -> Callable[[str, str], None]:
    def check(address: str, field: str) -> None:
        if address.lower() in bad_addresses or not _EMAIL_RE.match(address):
            add(_err(_INVALID_ADDRESS, field))

    return check


def _check_headers(headers: dict[str, Any], field: str, add: Add) -> None:
    plain_names = RESERVED_HEADERS.isdisjoint(map(str.lower, headers))
    if plain_names and _STR_ONLY.issuperset(map(type, headers.values())):
        return
    for name, value in headers.items():
        if name.lower() in RESERVED_HEADERS:
            add(_err(f"The header {name} is reserved and cannot be set.", f"{field}.{name}"))
        elif not isinstance(value, str):
            add(_err(f"Invalid type. Expected: string, given: {_json_type(value)}.", f"{field}.{name}"))


def _check_string_values(values: dict[str, Any], field: str, add: Add) -> None:
    if _STR_ONLY.issuperset(map(type, values.values())):
        return
    for key, value in values.items():
        if not isinstance(value, str):
            add(_err(f"Invalid type. Expected: string, given: {_json_type(value)}.", f"{field}.{key}"))


def _check_send_at(send_at: Any, field: str, now: float, add: Add) -> None:
    if isinstance(send_at, int) and send_at > now + MAX_SEND_AT_AHEAD_S:
        add(_err("A send cannot be scheduled more than 72 hours in advance.", field))


def _custom_args_message(size: int) -> str:
    return f"The total size of custom_args may not exceed {MAX_CUSTOM_ARGS_BYTES} bytes; got {size} bytes."


def _too_many_personalizations(count: int) -> str:
    return (
        f"The personalization block is limited to {MAX_PERSONALIZATIONS} personalizations per API request. "
        f"You have provided {count} personalizations. Please consider splitting this into multiple requests "
        "and resending your request."
    )


def _describe_schema_error(error: ValidationError) -> ErrorItem:
    """A SendGrid-style error item for one schema error, without echoing the (possibly huge) instance."""
    path = [str(p) for p in error.absolute_path]
    field = ".".join(path)
    keyword = str(error.validator)
    value: Any = error.validator_value
    instance: Any = error.instance
    if keyword == "required":
        present = instance if isinstance(instance, dict) else {}
        missing = next((name for name in value if name not in present), "?")
        field = ".".join([*path, missing])
        message = _REQUIRED_MESSAGES.get(missing, f"The {field} parameter is required.")
    elif keyword == "type":
        expected = value if isinstance(value, str) else " or ".join(value)
        message = f"Invalid type. Expected: {expected}, given: {_json_type(instance)}."
    elif keyword == "maxItems" and field == "personalizations":
        message = _too_many_personalizations(len(instance))
    elif keyword == "maxItems":
        message = f"The {field} array may contain at most {value} items; it has {len(instance)}."
    elif keyword == "minLength":
        plural = "s" * (value != 1)
        message = f"The {field} value must be a string at least {value} character{plural} in length."
    elif keyword == "maxLength":
        message = f"The {field} value must be at most {value} characters long; it has {len(instance)}."
    elif keyword == "maxProperties":
        message = f"The {field} object may have at most {value} properties; it has {len(instance)}."
    elif keyword == "uniqueItems":
        message = f"The {field} array must not contain duplicate items."
    elif keyword == "enum":
        options = ", ".join(map(str, value))
        message = f"The {field} value must be one of {options}; got {str(instance)[:80]!r}."
    else:
        message = error.message[:300]
    schema_path = "/".join(str(p) for p in error.schema_path)
    return _err(message, field or None, {"keyword": keyword, "schema_path": schema_path})


# --------------------------------------------------------------------------------------------------
# Recording and fault configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedPersonalization:
    """One accepted personalization (= one email to its recipients), as SendGrid would merge it."""

    message_id: str
    request_index: int  # index among accepted requests
    index: int  # index within its request's personalizations
    from_email: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str | None  # the personalization's subject, else the message's
    headers: dict[str, str]  # message headers overridden by the personalization's
    substitutions: dict[str, str]
    custom_args: dict[str, str]  # message custom_args overridden by the personalization's
    dynamic_template_data: dict[str, Any] | None
    template_id: str | None
    send_at: int | None

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.to + self.cc + self.bcc


@dataclass(frozen=True)
class RecordedRequest:
    message_id: str
    index: int
    received_at: float
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FaultConfig:
    """Injected faults. Rates are shares of mail-send requests (their sum must be <= 1)."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_timeout: float = 0.0
    timeout_delay_s: float = 3.0  # how long a "timeout" sleeps: make it exceed the client's timeout
    timeout_accepts: bool = True  # after the sleep: validate, record, answer (ambiguous) - or drop
    retry_after_s: int = 1  # Retry-After / X-RateLimit-Reset of 429s
    latency_s: float = 0.0  # added to every mail-send request

    def check(self) -> None:
        rates = (self.rate_429, self.rate_500, self.rate_503, self.rate_timeout)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError(f"fault rates must be in [0, 1] and sum to at most 1: {rates}")
        if self.timeout_delay_s < 0 or self.latency_s < 0 or self.retry_after_s < 0:
            raise ValueError("delays must be >= 0")


_FAULT_FIELDS = frozenset(f.name for f in fields(FaultConfig))
_Fault = int | Literal["timeout"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], standin: SendGridStandIn) -> None:
        self.standin = standin
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):  # clients that gave up: expected, stay quiet
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SendGridStandIn/1.0"
    disable_nagle_algorithm = True

    def _standin(self) -> SendGridStandIn:
        return cast(_Server, self.server).standin

    def version_string(self) -> str:
        return self.server_version

    def do_POST(self) -> None:
        self._standin()._dispatch(self, "POST")

    def do_GET(self) -> None:
        self._standin()._dispatch(self, "GET")

    def do_PUT(self) -> None:
        self._standin()._dispatch(self, "PUT")

    def do_PATCH(self) -> None:
        self._standin()._dispatch(self, "PATCH")

    def do_DELETE(self) -> None:
        self._standin()._dispatch(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        if self._standin().verbose:
            super().log_message(format, *args)


class _BodyTooLarge(Exception):
    pass


# --------------------------------------------------------------------------------------------------
# The stand-in
# --------------------------------------------------------------------------------------------------


class SendGridStandIn:
    """A local SendGrid v3 Mail Send server. See the module docstring.

    `api_keys=None` accepts any non-empty bearer key. `bad_addresses` are answered like invalid addresses.
    `record_bodies=False` keeps only per-recipient counts and custom_args (benchmarks);
    `record_custom_args=False` keeps only counts. `seed=None` makes fault draws non-deterministic.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] | None = None,
        bad_addresses: Iterable[str] = (),
        record_bodies: bool = True,
        record_custom_args: bool = True,
        faults: FaultConfig | None = None,
        seed: int | None = 0,
        schema_engine: SchemaEngine = "auto",
        max_body_bytes: int = MAX_BODY_BYTES,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.api_keys: frozenset[str] | None = None if api_keys is None else frozenset(api_keys)
        self.bad_addresses: frozenset[str] = frozenset(a.lower() for a in bad_addresses)
        self.record_bodies = record_bodies
        self.record_custom_args = record_custom_args
        self.faults = faults or FaultConfig()
        self.faults.check()
        self.seed = seed
        self.max_body_bytes = max_body_bytes
        self.verbose = verbose
        self.validator = MailSendValidator.shared(schema_engine)
        self.on_shutdown_request: Callable[[], None] | None = None

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._rng = random.Random(seed)
        self._fail_next: list[tuple[int, _Fault, int | None]] = []  # (remaining, status, retry_after_s)
        self._clear()

    def _clear(self) -> None:
        self._recipients: Counter[str] = Counter()
        # Summaries of _recipients for stats(), kept up to date by _count_recipients(): computing them in
        # stats() would walk every recipient each time a benchmark polls it.
        self._recipients_with_duplicates = 0
        self._max_per_recipient = 0
        self._custom_args: list[dict[str, str]] = []
        self._personalizations: list[RecordedPersonalization] = []
        self._requests: list[RecordedRequest] = []
        self._message_ids: list[str] = []
        self._statuses: Counter[int] = Counter()
        self._faults_injected: Counter[str] = Counter()
        self._requests_total = 0
        self._accepted_requests = 0
        self._accepted_personalizations = 0
        self._accepted_recipients = 0
        self._in_flight = 0

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="sendgrid-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes injected sleeps
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL - give it to `SendGridAPIClient(host=...)`."""
        return f"http://{self.host}:{self.port}"

    # -- runtime configuration -----------------------------------------------------------------------

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change settings at runtime; returns the new `config()`.

        Keys: any `FaultConfig` field, `bad_addresses` (replaces the set), `record_bodies`,
        `record_custom_args`, `api_keys` (list or None), `seed` (re-seeds the fault draws),
        `fail_next` ({"count", "status", "retry_after_s"}).
        """
        fault_changes = {k: v for k, v in changes.items() if k in _FAULT_FIELDS}
        unknown = (
            set(changes)
            - _FAULT_FIELDS
            - {
                "bad_addresses",
                "record_bodies",
                "record_custom_args",
                "api_keys",
                "seed",
                "fail_next",
            }
        )
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        faults = replace(self.faults, **fault_changes)
        faults.check()
        fail_next = changes.get("fail_next")
        with self._lock:
            self.faults = faults
            if "bad_addresses" in changes:
                self.bad_addresses = frozenset(a.lower() for a in changes["bad_addresses"])
            if "record_bodies" in changes:
                self.record_bodies = bool(changes["record_bodies"])
            if "record_custom_args" in changes:
                self.record_custom_args = bool(changes["record_custom_args"])
            if "api_keys" in changes:
                keys = changes["api_keys"]
                self.api_keys = None if keys is None else frozenset(keys)
            if "seed" in changes:
                self.seed = changes["seed"]
                self._rng = random.Random(self.seed)
        if fail_next:
            self.fail_next(
                int(fail_next["count"]),
                fail_next.get("status", 500),
                retry_after_s=fail_next.get("retry_after_s"),
            )
        return self.config()

    def fail_next(self, count: int, status: _Fault = 500, *, retry_after_s: int | None = None) -> None:
        """Answer the next `count` mail-send requests (after auth) with `status`, or "timeout"."""
        if status != "timeout" and not (isinstance(status, int) and 100 <= status <= 599):
            raise ValueError(f"status must be an HTTP status or 'timeout', not {status!r}")
        if count > 0:
            with self._lock:
                self._fail_next.append((count, status, retry_after_s))

    def add_bad_addresses(self, *addresses: str) -> None:
        with self._lock:
            self.bad_addresses = self.bad_addresses | {a.lower() for a in addresses}

    def reset(self) -> None:
        """Forget recorded traffic, counters and pending `fail_next`; re-seed the fault draws."""
        with self._lock:
            in_flight = self._in_flight
            self._clear()
            self._in_flight = in_flight
            self._fail_next.clear()
            self._rng = random.Random(self.seed)

    def config(self) -> dict[str, Any]:
        with self._lock:
            return {
                "faults": asdict(self.faults),
                "bad_addresses": sorted(self.bad_addresses),
                "record_bodies": self.record_bodies,
                "record_custom_args": self.record_custom_args,
                "api_keys": None if self.api_keys is None else sorted(self.api_keys),
                "seed": self.seed,
                "fail_next": [{"count": c, "status": s, "retry_after_s": r} for c, s, r in self._fail_next],
                "schema_engine": self.validator.engine,
                "max_body_bytes": self.max_body_bytes,
            }

    # -- what was received ---------------------------------------------------------------------------

    def count_for(self, address: str) -> int:
        """Emails accepted for `address` (case-insensitive; to, cc and bcc all count)."""
        with self._lock:
            return self._recipients[address.lower()]

    def recipient_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._recipients)

    @property
    def custom_args(self) -> list[dict[str, str]]:
        """The merged custom_args of every accepted personalization, in order."""
        with self._lock:
            return list(self._custom_args)

    def custom_arg_counts(self, key: str) -> dict[str, int]:
        """How many accepted personalizations carried each value of custom arg `key`."""
        with self._lock:
            return dict(Counter(args[key] for args in self._custom_args if key in args))

    @property
    def personalizations(self) -> list[RecordedPersonalization]:
        with self._lock:
            return list(self._personalizations)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def message_ids(self) -> list[str]:
        with self._lock:
            return list(self._message_ids)

    @property
    def emails_accepted(self) -> int:
        """Recipients (to + cc + bcc) of all accepted personalizations."""
        with self._lock:
            return self._accepted_recipients

    def stats(
        self,
        *,
        recipients: bool = False,
        custom_args: bool = False,
        personalizations: bool = False,
        custom_arg_key: str | None = None,
    ) -> dict[str, Any]:
        """A JSON-able summary; the flags add the (possibly large) details."""
        with self._lock:
            out: dict[str, Any] = {
                "requests_total": self._requests_total,
                "requests_accepted": self._accepted_requests,
                "personalizations_accepted": self._accepted_personalizations,
                "recipients_accepted": self._accepted_recipients,
                "distinct_recipients": len(self._recipients),
                "recipients_with_duplicates": self._recipients_with_duplicates,
                "max_per_recipient": self._max_per_recipient,
                "responses_by_status": {str(k): v for k, v in sorted(self._statuses.items())},
                "faults_injected": dict(self._faults_injected),
                "in_flight": self._in_flight,
            }
            if recipients:
                out["recipients"] = dict(self._recipients)
            if custom_args:
                out["custom_args"] = list(self._custom_args)
            if personalizations:
                out["personalizations"] = [asdict(p) for p in self._personalizations]
            if custom_arg_key is not None:
                values = Counter(a[custom_arg_key] for a in self._custom_args if custom_arg_key in a)
                out["custom_arg_counts"] = {
                    "key": custom_arg_key,
                    "distinct": len(values),
                    "total": sum(values.values()),
                    "duplicates": {v: c for v, c in values.items() if c > 1},
                }
        out["config"] = self.config()
        return out

    def wait_until(self, predicate: Callable[[SendGridStandIn], bool], timeout: float = 10.0) -> bool:
        """Wait (woken by each finished request) until `predicate(self)` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(remaining, 0.05))
        return True

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being handled (e.g. a "timeout" finished sleeping and recorded)."""

        def idle(s: SendGridStandIn) -> bool:
            with s._lock:
                return s._in_flight == 0

        return self.wait_until(idle, timeout)

    # -- request handling ----------------------------------------------------------------------------

    def _dispatch(self, h: _Handler, method: str) -> None:
        parts = urlsplit(h.path)
        path = parts.path.rstrip("/") or "/"
        if path == MAIL_SEND_PATH and method == "POST":
            self._mail_send(h)
            return
        if path.startswith(CONTROL_PREFIX.rstrip("/")):
            self._control(h, method, path, parse_qs(parts.query))
            return
        self._drain(h)
        if path == MAIL_SEND_PATH:
            _reply(h, 405, _errors_body([_err("method not allowed")]))
        else:
            _reply(h, 404, _errors_body([_err("not found")]))

    def _read_body(self, h: _Handler) -> bytes:
        """The request body (Content-Length or chunked); `_BodyTooLarge` once it exceeds the limit."""
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(h)
        length = int(h.headers.get("Content-Length") or 0)
        if length > self.max_body_bytes:
            self._drain(h)
            raise _BodyTooLarge
        return h.rfile.read(length) if length else b""

    def _read_chunked(self, h: _Handler) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(h.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                break
            chunk = h.rfile.read(size)
            h.rfile.readline(16)  # the CRLF after the chunk
            total += len(chunk)
            if total <= self.max_body_bytes:
                parts.append(chunk)
        while h.rfile.readline(65536).strip():  # trailers, up to the blank line
            pass
        if total > self.max_body_bytes:
            raise _BodyTooLarge
        return b"".join(parts)

    def _drain(self, h: _Handler) -> None:
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            self._read_chunked(h)
            return
        remaining = int(h.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = h.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _draw_fault(self) -> tuple[_Fault, int | None] | None:
        with self._lock:
            if self._fail_next:
                remaining, status, retry_after = self._fail_next[0]
                if remaining <= 1:
                    self._fail_next.pop(0)
                else:
                    self._fail_next[0] = (remaining - 1, status, retry_after)
                self._faults_injected["fail_next"] += 1
                return status, retry_after
            f = self.faults
            if f.rate_429 + f.rate_500 + f.rate_503 + f.rate_timeout <= 0:
                return None
            r = self._rng.random()
            choices: tuple[tuple[_Fault, float], ...] = (
                (429, f.rate_429),
                (500, f.rate_500),
                (503, f.rate_503),
                ("timeout", f.rate_timeout),
            )
            for fault, rate in choices:
                if r < rate:
                    self._faults_injected[str(fault)] += 1
                    return fault, None
                r -= rate
            return None

    def _mail_send(self, h: _Handler) -> None:
        with self._lock:
            self._requests_total += 1
            self._in_flight += 1
        response: _Response | None = None
        quiet = False
        try:
            response, quiet = self._mail_send_inner(h)
        finally:
            # Book-keeping happens before the client can see the answer, so that it can trust what it reads.
            with self._changed:
                self._in_flight -= 1
                if response is not None:
                    self._statuses[response.status] += 1
                self._changed.notify_all()
        if response is None:  # an injected timeout that drops the request
            h.close_connection = True
        else:
            _reply(h, *response, quiet=quiet)

    def _mail_send_inner(self, h: _Handler) -> tuple[_Response | None, bool]:
        """Handle a mail send: (the response or None = drop the connection, whether the client has left)."""
        try:
            raw = self._read_body(h)
        except _BodyTooLarge:
            return _Response(413, _errors_body([_err("content too large")]), close=True), False

        auth = h.headers.get("Authorization") or ""
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return _Response(401, _errors_body([_err("authorization required")])), False
        if self.api_keys is not None and key not in self.api_keys:
            message = "The provided authorization grant is invalid, expired, or revoked"
            return _Response(401, _errors_body([_err(message)])), False
        content_type = (h.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _Response(415, _errors_body([_err("Content-Type should be application/json.")])), False

        fault = self._draw_fault()
        quiet = False
        if fault is not None:
            kind, retry_after = fault
            if kind != "timeout":
                return _fault_response(
                    int(kind), self.faults.retry_after_s if retry_after is None else retry_after
                ), False
            self._sleep(self.faults.timeout_delay_s)
            if not self.faults.timeout_accepts:
                return None, True
            quiet = True  # the client has most likely gone; go on and accept anyway: the ambiguous case
        self._sleep(self.faults.latency_s)
        return self._accept_or_reject(h, raw), quiet

    def _accept_or_reject(self, h: _Handler, raw: bytes) -> _Response:
        if (h.headers.get("Content-Encoding") or "").lower() == "gzip":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                return _Response(400, _errors_body([_err("The request body is not valid gzip.")]))
            if len(raw) > self.max_body_bytes:
                return _Response(413, _errors_body([_err("content too large")]))
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _Response(400, _errors_body([_err(f"Bad Request: the body is not valid JSON ({exc})")]))
        errors, addresses = self.validator.check(body, self.bad_addresses)
        if errors:
            return _Response(400, _errors_body(errors))
        message_id = _message_id()
        self._record(body, h, message_id, addresses)
        return _Response(202, b"", {"X-Message-Id": message_id})

    def _record(self, body: dict[str, Any], h: _Handler, message_id: str, addresses: list[str]) -> None:
        """Record an accepted request; `addresses` are its lowercased recipients (`MailSendValidator.check`)."""
        personalizations: list[dict[str, Any]] = body["personalizations"]
        record_bodies = self.record_bodies  # one reading of the settings for the whole request
        record_custom_args = self.record_custom_args or record_bodies
        args_list: list[dict[str, str]] = []
        if record_custom_args:
            top_args: dict[str, str] = body.get("custom_args") or {}
            if top_args:
                args_list = [{**top_args, **p.get("custom_args", {})} for p in personalizations]
            else:
                args_list = [p.get("custom_args") or {} for p in personalizations]
        with self._lock:
            request_index = self._accepted_requests
            self._accepted_requests += 1
            self._accepted_personalizations += len(personalizations)
            self._accepted_recipients += len(addresses)
            self._count_recipients(addresses)
            self._message_ids.append(message_id)
            self._custom_args.extend(args_list)
        if not record_bodies:
            return
        top_headers: dict[str, str] = body.get("headers") or {}
        recorded = [
            RecordedPersonalization(
                message_id=message_id,
                request_index=request_index,
                index=i,
                from_email=(p.get("from") or body["from"])["email"],
                to=tuple(person["email"] for person in p.get("to") or ()),
                cc=tuple(person["email"] for person in p.get("cc") or ()),
                bcc=tuple(person["email"] for person in p.get("bcc") or ()),
                subject=p.get("subject", body.get("subject")),
                headers={**top_headers, **(p.get("headers") or {})},
                substitutions=dict(p.get("substitutions") or {}),
                custom_args=args_list[i],
                dynamic_template_data=p.get("dynamic_template_data"),
                template_id=body.get("template_id"),
                send_at=p.get("send_at", body.get("send_at")),
            )
            for i, p in enumerate(personalizations)
        ]
        request = RecordedRequest(
            message_id=message_id,
            index=request_index,
            received_at=time.time(),
            headers={k: v for k, v in h.headers.items() if k.lower() != "authorization"},
            body=body,
        )
        with self._lock:
            self._personalizations.extend(recorded)
            self._requests.append(request)

    def _count_recipients(self, addresses: list[str]) -> None:
        """Count one accepted request's recipients and update the summaries of the counts (lock held)."""
        counts = self._recipients
        distinct_before = len(counts)
        counts.update(addresses)
        if len(counts) - distinct_before == len(addresses):  # each one new (the usual case): counted once
            if addresses:
                self._max_per_recipient = max(self._max_per_recipient, 1)
            return
        times = Counter(addresses)
        now = list(map(counts.__getitem__, times))
        before = list(map(operator.sub, now, times.values()))
        self._recipients_with_duplicates += sum(n > 1 for n in now) - sum(b > 1 for b in before)
        self._max_per_recipient = max(self._max_per_recipient, *now)

    # -- control API ------------------------------------------------------------------------------

    def _control(self, h: _Handler, method: str, path: str, query: dict[str, list[str]]) -> None:
        action = path[len(CONTROL_PREFIX) :]
        try:
            raw = self._read_body(h)
            payload: Any = json.loads(raw) if raw.strip() else {}
            if method == "GET" and action == "health":
                result: Any = {"ok": True, "url": self.url}
            elif method == "GET" and action == "stats":

                def flag(name: str) -> bool:
                    return (query.get(name) or ["0"])[-1].lower() in ("1", "true", "yes")

                result = self.stats(
                    recipients=flag("recipients"),
                    custom_args=flag("custom_args"),
                    personalizations=flag("personalizations"),
                    custom_arg_key=query["custom_arg"][-1] if query.get("custom_arg") else None,
                )
            elif method == "POST" and action == "reset":
                self.reset()
                result = {"ok": True}
            elif method == "POST" and action == "config":
                if not isinstance(payload, dict):
                    raise ValueError("the config body must be a JSON object")
                result = self.configure(**payload)
            elif method == "POST" and action == "fail_next":
                self.fail_next(
                    int(payload["count"]),
                    payload.get("status", 500),
                    retry_after_s=payload.get("retry_after_s"),
                )
                result = self.config()
            elif method == "POST" and action == "shutdown":
                callback = self.on_shutdown_request
                if callback is None:
                    threading.Thread(target=self.stop, daemon=True).start()
                else:
                    callback()
                result = {"ok": True}
            else:
                _reply(h, 404, _errors_body([_err(f"no control action {method} {path}")]))
                return
        except _BodyTooLarge:
            _reply(h, 413, _errors_body([_err("content too large")]), close=True)
            return
        except (ValueError, KeyError, TypeError) as exc:
            _reply(h, 400, _errors_body([_err(f"{type(exc).__name__}: {exc}")]))
            return
        _reply(h, 200, json.dumps(result).encode())


def _reply(
    h: _Handler,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    close: bool = False,
    *,
    quiet: bool = False,
) -> int:
    """Write a complete response; `quiet` swallows a client that already hung up. Returns `status`."""
    try:
        h.send_response(status)
        if body:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        if close:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if body:
            h.wfile.write(body)
    except (ConnectionError, TimeoutError):
        h.close_connection = True
        if not quiet:
            raise
    return status


class _Response(NamedTuple):
    status: int
    body: bytes
    headers: Mapping[str, str] | None = None
    close: bool = False


def _fault_response(status: int, retry_after_s: int) -> _Response:
    if status == 429:
        headers = {
            "Retry-After": str(retry_after_s),
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time()) + retry_after_s),
        }
        return _Response(429, _errors_body([_err("too many requests")]), headers)
    messages = {500: "internal server error", 503: "service unavailable"}
    try:
        default = HTTPStatus(status).phrase.lower()
    except ValueError:
        default = "error"
    headers = {"Retry-After": str(retry_after_s)} if status == 503 else {}
    return _Response(status, _errors_body([_err(messages.get(status, default))]), headers)


# --------------------------------------------------------------------------------------------------
# Event-webhook signing
# --------------------------------------------------------------------------------------------------


def generate_webhook_keypair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A fresh ECDSA P-256 key pair: (private key, public key as base64 DER = SendGrid's verification key)."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, base64.b64encode(der).decode()


def sign_webhook(
    private_key: ec.EllipticCurvePrivateKey, payload: bytes, timestamp: str | None = None
) -> dict[str, str]:
    """Sign an event-webhook POST body as SendGrid does: ECDSA/SHA-256 over timestamp + payload, base64 DER.

    Returns the two headers to send with `payload`. `timestamp` defaults to now (unix seconds).
    """
    ts = str(int(time.time())) if timestamp is None else timestamp
    signature = private_key.sign(ts.encode() + payload, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: ts}


# --------------------------------------------------------------------------------------------------
# Separate process
# --------------------------------------------------------------------------------------------------


def _http_json(method: str, url: str, payload: Any = None, timeout: float = 30.0) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


class StandInProcess:
    """Runs `python -m tests.support.sendgrid_standin` in a child process and drives its control API.

    `args` are extra CLI arguments (e.g. `["--no-record-bodies", "--rate-429", "0.05"]`).
    """

    def __init__(
        self,
        args: Iterable[str] = (),
        *,
        python: str = sys.executable,
        startup_timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.python = python
        self.startup_timeout = startup_timeout
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the stand-in process is not running")
        return self._url

    def start(self) -> Self:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child; closed in stop()
        self.process = subprocess.Popen(
            [self.python, "-m", "tests.support.sendgrid_standin", "--port", "0", *self.args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=self.env,
        )
        line: list[str] = []
        stdout = self.process.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.startup_timeout)
        url = line[0].strip() if line else ""
        if not url.startswith("http://"):
            self.process.kill()
            self.process.wait()
            self._stderr.seek(0)
            detail = self._stderr.read().decode(errors="replace")[-4000:]
            raise RuntimeError(f"the stand-in process did not start: {url!r}\n{detail}")
        self._url = url
        return self

    def stats(
        self,
        *,
        recipients: bool = False,
        custom_args: bool = False,
        personalizations: bool = False,
        custom_arg_key: str | None = None,
    ) -> dict[str, Any]:
        params = [
            name
            for name, wanted in (
                ("recipients=1", recipients),
                ("custom_args=1", custom_args),
                ("personalizations=1", personalizations),
            )
            if wanted
        ]
        if custom_arg_key is not None:
            params.append("custom_arg=" + urllib.parse.quote(custom_arg_key))
        query = "?" + "&".join(params) if params else ""
        result: dict[str, Any] = _http_json("GET", f"{self.url}{CONTROL_PREFIX}stats{query}")
        return result

    def reset(self) -> None:
        _http_json("POST", f"{self.url}{CONTROL_PREFIX}reset", {})

    def configure(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = _http_json("POST", f"{self.url}{CONTROL_PREFIX}config", changes)
        return result

    def fail_next(self, count: int, status: _Fault = 500, *, retry_after_s: int | None = None) -> None:
        payload = {"count": count, "status": status, "retry_after_s": retry_after_s}
        _http_json("POST", f"{self.url}{CONTROL_PREFIX}fail_next", payload)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Ask for a clean shutdown (writes --state-file), else terminate; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            try:
                _http_json("POST", f"{self.url}{CONTROL_PREFIX}shutdown", {}, timeout=5)
            except (OSError, urllib.error.URLError):
                process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
        self.process = None
        return process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.sendgrid_standin",
        description="Local SendGrid v3 Mail Send stand-in. Prints its URL on stdout line 1.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = an ephemeral port")
    parser.add_argument("--api-key", action="append", dest="api_keys", help="accepted key (repeatable)")
    parser.add_argument("--bad-address", action="append", default=[], dest="bad_addresses")
    parser.add_argument("--no-record-bodies", action="store_true", help="record only counts + custom_args")
    parser.add_argument("--no-record-custom-args", action="store_true", help="and no custom_args")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--rate-500", type=float, default=0.0)
    parser.add_argument("--rate-503", type=float, default=0.0)
    parser.add_argument("--rate-timeout", type=float, default=0.0)
    parser.add_argument("--timeout-delay", type=float, default=3.0, help="seconds a 'timeout' sleeps")
    parser.add_argument("--timeout-drops", action="store_true", help="a 'timeout' drops instead of accepting")
    parser.add_argument("--retry-after", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every mail send")
    parser.add_argument("--schema-engine", choices=["auto", "jsonschema", "jsonschema_rs"], default="auto")
    parser.add_argument("--state-file", type=Path, help="final stats (with recipients) go here")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


GC_THRESHOLD_GEN0 = 10_000  # of the separate process (see `main()`); Python's default is 700


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    faults = FaultConfig(
        rate_429=args.rate_429,
        rate_500=args.rate_500,
        rate_503=args.rate_503,
        rate_timeout=args.rate_timeout,
        timeout_delay_s=args.timeout_delay,
        timeout_accepts=not args.timeout_drops,
        retry_after_s=args.retry_after,
        latency_s=args.latency,
    )
    standin = SendGridStandIn(
        host=args.host,
        port=args.port,
        api_keys=args.api_keys,
        bad_addresses=args.bad_addresses,
        record_bodies=not args.no_record_bodies,
        record_custom_args=not args.no_record_custom_args,
        faults=faults,
        seed=args.seed,
        schema_engine=args.schema_engine,
        verbose=args.verbose,
    )
    done = threading.Event()
    standin.on_shutdown_request = done.set
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    # A process of its own, so its garbage collector can be tuned for it: a 1000-personalization body is
    # ~5,000 containers, all alive until the request is answered, which at the default threshold (700)
    # sets off ~8 young and, now and then, full collections per request that find nothing (the parsed
    # JSON has no cycles) - ~10% of the CPU. Start-up objects (the compiled schema, modules) are frozen
    # out of the full collections' reach.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_GEN0, *gc.get_threshold()[1:])
    standin.start()
    print(standin.url, flush=True)
    while not done.wait(0.5):
        pass
    time.sleep(0.05)  # let the shutdown request's response go out
    standin.stop()
    if args.state_file is not None:
        state = standin.stats(recipients=True)
        tmp = args.state_file.with_name(args.state_file.name + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(args.state_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
