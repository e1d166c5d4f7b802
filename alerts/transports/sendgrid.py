"""SendGrid v3 Mail Send through the official client: one API request per batch, per-recipient outcomes.

One request carries the shared rendering once (subject, text, HTML with ``%%name%%`` placeholders) and one
``personalizations`` entry per recipient: the address, the substitutions that fill the placeholders, the
one-click unsubscribe headers, and our delivery id in ``custom_args`` (SendGrid echoes it in every webhook
event). The body is a plain dict: the library's ``Mail`` helper builds an object graph per recipient, which
costs far more than the request itself.

SendGrid's limits are respected before sending: at most 1000 personalizations and no address twice per
request (duplicates go to another request), 10,000 bytes of substitutions and of custom_args per
personalization (a recipient over it fails alone), 30 MB per request (split when over).

Answers: 2xx -> every recipient SENT with the ``X-Message-Id``; 429/5xx -> RETRY with the wait the provider
asked for; 400 -> the personalizations it names fail alone and the rest is sent again (or the request is
bisected when the error names no personalization); 413 -> bisected; any other 4xx -> FAILED with the
provider's text and status. A timeout after the request went out is the one case where acceptance is
unknown: RETRY, flagged ``ambiguous`` so the delivery counts it.

The API key and request bodies are never logged (the client logs both at DEBUG: its logger is held at WARNING).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import structlog

from alerts import jsontext
from alerts.logs import redact
from alerts.transports.base import PART_TAGS, TIMEOUT, UNREACHABLE, Batch, Outcome, Recipient, Result, fill

log = structlog.get_logger("alerts.transports.sendgrid")

MAX_PERSONALIZATIONS = 1000
MAX_SUBSTITUTION_BYTES = 10_000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_REQUEST_BYTES = 30_000_000
# A provider asking for more than an hour is capped: the task's own retry limit then decides.
MAX_RETRY_AFTER_S = 3600.0
# Characters that would need escaping in HTML: SendGrid substitutes the same value in text and HTML parts.
_HTML_UNSAFE = re.compile(r"[&<>\"'\x00-\x1f\x7f]")
# The same characters as bytes, to delete with bytes.translate: several times faster than the regex on
# ASCII text, which per-recipient values (URLs) are.
_HTML_UNSAFE_BYTES = b"&<>\"'" + bytes(range(0x20)) + b"\x7f"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FRAGMENT_SUFFIXES = ("_text", "_html")
_PERSONALIZATION_FIELD = re.compile(r"^personalizations(?:\.|\[)(\d+)")

# Privacy: no tracking pixel, no rewritten links, no SendGrid-inserted unsubscribe footer (we have our own).
TRACKING_OFF: dict[str, Any] = {
    "click_tracking": {"enable": False, "enable_text": False},
    "open_tracking": {"enable": False},
    "subscription_tracking": {"enable": False},
    "ganalytics": {"enable": False},
}


@dataclass(slots=True)
class _Item:
    recipient: Recipient
    body: dict[str, Any]
    key: str  # the address, lower-cased: SendGrid refuses one address twice per request
    size: int  # JSON bytes (an upper bound until measured)


@dataclass
class _Chunk:
    items: list[_Item] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    size: int = 0


@dataclass(frozen=True)
class _Answer:
    """What one API request came to."""

    kind: str  # "accepted" | "retry" | "failed" | "error"
    status: int | None = None
    message_id: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    ambiguous: bool = False
    errors: tuple[tuple[str, str | None], ...] = ()  # (message, field) from a 4xx body


# Control characters JSON writes as \u00XX (tab, newline and carriage return have short escapes).
_JSON_CONTROL_BYTES = bytes(c for c in range(32) if c not in (9, 10, 13))


def json_bytes(value: str) -> int:
    """Bytes of ``value`` as a compact UTF-8 JSON string without its quotes: how SendGrid (and the stand-in)
    measure the 10,000-byte substitutions limit. Counted, not encoded as JSON: a digest's parts (kilobytes)
    are checked per recipient, so the UTF-8 bytes are scanned in C (a control character or an escaped one is
    never part of a multi-byte sequence), twice as fast as a regex over the text."""
    raw = value.encode("utf-8")
    if len(raw.translate(None, _JSON_CONTROL_BYTES)) != len(raw):
        return len(json.dumps(value, ensure_ascii=False).encode("utf-8")) - 2
    return len(raw) + raw.count(b"\n") + raw.count(b'"') + raw.count(b"\\") + raw.count(b"\t") + raw.count(b"\r")


def substitution_bytes(substitutions: Mapping[str, str]) -> int:
    """Compact JSON size of a personalization's substitutions object: orjson writes exactly that (compact,
    UTF-8, the same escapes), in one C call for the whole object, 4-5x faster than measuring each key and
    value (a packed digest's parts are checked per recipient)."""
    if not substitutions:
        return 2
    try:
        return len(orjson.dumps(substitutions if isinstance(substitutions, dict) else dict(substitutions)))
    except orjson.JSONEncodeError:  # a lone surrogate: json_bytes raises for it, as it always did
        return 1 + sum(json_bytes(k) + json_bytes(v) + 6 for k, v in substitutions.items())


def _json_bound(chars: int) -> int:
    # json.dumps(ensure_ascii=True) writes at most 12 bytes per character (an escaped surrogate pair).
    return 12 * chars + 256


def prepare(batch: Batch) -> tuple[list[_Item], list[Result]]:
    """Personalizations for every sendable recipient, and FAILED results for the ones that cannot be sent.

    The hot loop of the transport (runs for every recipient), so it checks joined strings, not each value,
    and works out once per batch what is the same for every recipient.
    """
    items: list[_Item] = []
    failed: list[Result] = []
    templates = list(batch.headers.items())
    if any(_CONTROL.search(n + t) for n, t in templates):
        return [], [_fail(r, "a header template contains a control character") for r in batch.recipients]
    # Each recipient's headers start as a copy of the templates (overwriting a key keeps its place, so the
    # order stays the batch's); the ones with placeholders are then filled in.
    fixed_headers = dict(templates)
    templated = [(name, template) for name, template in templates if "%%" in template]
    alert = batch.category == "alert"
    ref_prefix = f"{batch.category}-"
    # Size bound of the JSON around the per-recipient strings: _json_bound is linear (12 * chars + c), so
    # this part of the bound is the same for every recipient and added to 12 * (their chars).
    fixed_bound = _json_bound(len(ref_prefix) + 200)
    # Placeholder tags (%%name%%) and their total length, for the value names of the previous recipient:
    # every recipient of a send has the same names, so this is worked out once.
    names: tuple[str, ...] | None = None
    tag_of: dict[str, str] = {}
    tag_chars = 0
    fragment_names: list[str] = []
    url_names: list[str] = []
    for r in batch.recipients:
        values = r.values
        if tuple(values) != names:
            names = tuple(values)
            tag_of = {name: f"%%{name}%%" for name in names}
            tag_chars = sum(map(len, tag_of.values()))
            # Fragments (alerts.contents: our own rendering of one part, whose tag only that part has) are
            # put in as they are; every other value is a URL and must be safe in HTML as it is.
            fragment_names = [name for name in names if name.endswith(_FRAGMENT_SUFFIXES)]
            url_names = [name for name in names if not name.endswith(_FRAGMENT_SUFFIXES)]
        substitutions: dict[str, str] = {}
        for name, value in values.items():
            substitutions[tag_of[name]] = value
        # Values are URLs; SendGrid puts the same value into the HTML part unescaped.
        joined = "".join([values[name] for name in url_names]) if fragment_names else "".join(values.values())
        fragment_bytes = sum(len(values[name].encode("utf-8")) for name in fragment_names) if fragment_names else 0
        joined_chars = len(joined)
        ascii_only = joined.isascii()
        if ascii_only:
            # Deleting the unsafe bytes shortens the text iff it has one: the regex's answer, several times faster.
            unsafe = len(joined.encode("ascii").translate(None, _HTML_UNSAFE_BYTES)) != joined_chars
        else:
            unsafe = _HTML_UNSAFE.search(joined) is not None
        if unsafe:
            failed.append(_fail(r, "a per-recipient value has characters unsafe in HTML"))
            continue
        sub_bytes = tag_chars + (joined_chars if ascii_only else len(joined.encode("utf-8"))) + fragment_bytes
        if sub_bytes > MAX_SUBSTITUTION_BYTES:
            failed.append(_fail(r, f"substitutions are {sub_bytes} bytes; SendGrid allows {MAX_SUBSTITUTION_BYTES}"))
            continue
        parts = r.parts
        if parts:
            # A digest's own entries (alerts.digests.send): whole HTML / text blocks, escaped by their
            # renderer and put by SendGrid only where their tag is (one part each), so not screened as URLs.
            for name, value in parts.items():
                substitutions[PART_TAGS[name]] = value
            if _CONTROL.search(parts.get("subject", "")):
                failed.append(_fail(r, "the subject would contain a control character"))
                continue
            # Measured as SendGrid does (JSON: every newline of the text part counts twice).
            sub_bytes = substitution_bytes(substitutions)
            if sub_bytes > MAX_SUBSTITUTION_BYTES:
                failed.append(
                    _fail(r, f"substitutions are {sub_bytes} bytes; SendGrid allows {MAX_SUBSTITUTION_BYTES}")
                )
                continue
        message_id = r.message_id
        if "\r" in message_id or "\n" in message_id:
            failed.append(_fail(r, "the Message-ID would contain a line break"))
            continue
        headers = fixed_headers.copy()
        for header, template in templated:
            headers[header] = fill(template, values)
        headers["Message-ID"] = message_id
        # custom_args: a few ASCII bytes, far below SendGrid's 10,000.
        args = {"delivery_id": str(r.delivery_id)} if alert else {"ref": ref_prefix + str(r.delivery_id)}
        email = r.email
        body = {"to": [{"email": email}], "substitutions": substitutions, "headers": headers, "custom_args": args}
        if parts:
            # A digest's parts (kilobytes each) are bounded from their exact SendGrid measure (sub_bytes:
            # compact UTF-8 JSON) instead of 12 * chars: with that, 1,000 packed digests always looked
            # "maybe over 30 MB" and ``plan`` encoded every personalization once more to measure it. The
            # request's JSON (ensure_ascii, ", " and ": " separators) writes ASCII text in the same bytes
            # plus one per separator; a non-ASCII character as \uXXXX (6 bytes for 2-3 UTF-8 bytes) or a
            # surrogate pair (12 for 4): at most 4 bytes more per UTF-8 byte beyond its first.
            exact = sub_bytes + 2 * len(substitutions)
            for k, v in substitutions.items():
                if not v.isascii():
                    exact += 4 * (len(v.encode("utf-8")) - len(v))
                if not k.isascii():
                    exact += 4 * (len(k.encode("utf-8")) - len(k))
            chars = len(email) + 2 * (joined_chars + fragment_bytes) + len(message_id)
        else:
            exact = 0
            chars = len(email) + sub_bytes + 2 * (joined_chars + fragment_bytes) + len(message_id)
        if r.subject is not None:
            if _CONTROL.search(r.subject):
                failed.append(_fail(r, "the subject would contain a control character"))
                continue
            body["subject"] = r.subject  # SendGrid: a personalization's subject overrides the message's
            chars += len(r.subject)
        items.append(_Item(r, body, email.lower(), exact + 12 * chars + fixed_bound))
    return items, failed


def base_body(batch: Batch) -> dict[str, Any]:
    """Everything but the personalizations: the same for every request of the batch."""
    sender: dict[str, str] = {"email": batch.from_email}
    if batch.from_name:
        sender["name"] = batch.from_name
    content = [{"type": "text/plain", "value": batch.content.text}, {"type": "text/html", "value": batch.content.html}]
    return {
        "from": sender,
        "subject": batch.content.subject,
        "content": [c for c in content if c["value"]],
        "categories": [batch.category[:255]],
        "tracking_settings": TRACKING_OFF,
    }


def plan(items: Sequence[_Item], base_size: int, limit: int | None = None) -> list[_Chunk]:
    """Group personalizations into requests: <= 1000 each, an address once per request, under the size limit."""
    budget = (MAX_REQUEST_BYTES if limit is None else limit) - base_size
    total = sum(i.size for i in items)
    if total > budget:
        for item in items:  # the cheap upper bound says "maybe too big": measure exactly
            item.size = len(json.dumps(item.body)) + 2
        total = sum(i.size for i in items)
    keys = {i.key for i in items}
    if items and len(items) <= MAX_PERSONALIZATIONS and len(keys) == len(items) and total <= budget:
        # The usual batch: one request holds it all. The loop below would put every item in the first
        # chunk (sizes are positive, so no prefix of them exceeds the total); skip its per-item checks.
        return [_Chunk(list(items), keys, total)]
    chunks: list[_Chunk] = []
    first_open = 0
    for item in items:
        for chunk in chunks[first_open:]:
            fits = len(chunk.items) < MAX_PERSONALIZATIONS and chunk.size + item.size <= budget
            if fits and item.key not in chunk.keys:
                break
        else:
            chunk = _Chunk()
            chunks.append(chunk)
        chunk.items.append(item)
        chunk.keys.add(item.key)
        chunk.size += item.size
        while first_open < len(chunks) and len(chunks[first_open].items) >= MAX_PERSONALIZATIONS:
            first_open += 1
    return chunks


def _fail(r: Recipient, error: str, code: int | None = None) -> Result:
    return Result(r.delivery_id, Outcome.FAILED, error=error, error_code=code)


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date) or ``X-RateLimit-Reset`` (epoch)."""
    now = time.time() if now is None else now
    wait: float | None = None
    raw = headers.get("Retry-After") if headers is not None else None
    if raw:
        try:
            wait = float(raw)
        except ValueError:
            try:
                wait = parsedate_to_datetime(str(raw)).timestamp() - now
            except (TypeError, ValueError):
                wait = None
    reset = headers.get("X-RateLimit-Reset") if headers is not None and wait is None else None
    if reset:
        try:
            value = float(reset)
            wait = value - now if value > 1_000_000_000 else value
        except ValueError:
            wait = None
    if wait is None:
        return None
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)


def _provider_errors(body: Any) -> tuple[tuple[str, str | None], ...]:
    try:
        data = json.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
        found = []
        for e in data.get("errors") or []:
            raw_field = e.get("field")
            field_name = None if raw_field in (None, "", "null") else str(raw_field)
            found.append((str(e.get("message") or "error"), field_name))
        return tuple(found)
    except (ValueError, AttributeError, TypeError):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        return ((text.strip()[:300] or "no error text", None),)


def _describe(status: int, errors: Iterable[tuple[str, str | None]]) -> str:
    parts = [f"{message} ({where})" if where else message for message, where in errors]
    return redact(f"SendGrid {status}: " + ("; ".join(parts) or "no error text"))[:1000]


class SendGridTransport:
    name = "sendgrid"

    def __init__(
        self,
        api_key: str,
        host: str = "https://api.sendgrid.com",
        timeout_s: float = 10.0,
        budget_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from sendgrid import SendGridAPIClient

        # The client logs request headers (the API key) and bodies (addresses) at DEBUG.
        logging.getLogger("python_http_client").setLevel(logging.WARNING)
        self._client = SendGridAPIClient(api_key, host=host)
        # python_http_client has no timeout by default: a stalled connection would hang the worker.
        self._client.client.timeout = timeout_s
        self.timeout_s = timeout_s
        # Total time one send() may spend (several requests when split); the rest is retried later, so a
        # batch never outlives its claim lease.
        self.budget_s = budget_s
        self._clock = clock
        # Cumulative seconds building requests and waiting for HTTP; the sender reports the difference.
        self.timings: dict[str, float] = {"build_s": 0.0, "http_s": 0.0}
        # What SendGrid answered to each request, by status code (see transports.base): one increment per
        # request, not per recipient.
        self.answers: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"SendGridTransport(host={self._client.host!r})"

    def send(self, batch: Batch) -> list[Result]:
        started = time.perf_counter()
        items, results = prepare(batch)
        if not items:
            return results
        base = base_body(batch)
        base_size = len(json.dumps(base)) + len('"personalizations": [], ')
        if base_size > MAX_REQUEST_BYTES:
            return results + [_fail(i.recipient, "message is larger than SendGrid's 30 MB", 413) for i in items]
        deadline = None if self.budget_s is None else self._clock() + self.budget_s
        work: deque[list[_Item]] = deque(c.items for c in plan(items, base_size))
        self.timings["build_s"] += time.perf_counter() - started
        stop: _Answer | None = None  # once set, every request not yet made gets this outcome
        while work:
            chunk = work.popleft()
            if stop is None and deadline is not None and deadline - self._clock() < self.timeout_s:
                stop = _Answer("retry", error="time budget for this batch ran out before this request")
            if stop is not None:
                results.extend(self._results(chunk, stop, ambiguous=False))
                continue
            answer = self._post(base, chunk)
            if answer.kind == "accepted":
                results.extend(self._results(chunk, answer))
            elif answer.kind == "retry":
                results.extend(self._results(chunk, answer))
                # The provider is busy or unwell: the rest waits for the retry too, without asking again now.
                stop = replace(answer, error=f"not tried after: {answer.error}"[:1000], ambiguous=False)
            elif answer.status == 400:
                results.extend(self._isolate(chunk, answer, work))
            elif answer.status == 413 and len(chunk) > 1:
                half = len(chunk) // 2
                work.extendleft([chunk[half:], chunk[:half]])
            else:
                # 401/403/404...: about the account or the API, not a recipient; every request would get the same.
                results.extend(self._results(chunk, answer))
                stop = answer
        return results

    def _results(self, chunk: Sequence[_Item], answer: _Answer, ambiguous: bool | None = None) -> list[Result]:
        # One Result per recipient: the answer's fields are read once, not per recipient.
        if answer.kind == "accepted":
            sent, message_id = Outcome.SENT, answer.message_id
            return [Result(i.recipient.delivery_id, sent, message_id) for i in chunk]
        outcome = Outcome.RETRY if answer.kind == "retry" else Outcome.FAILED
        error, status, wait = answer.error, answer.status, answer.retry_after_s
        flag = answer.ambiguous if ambiguous is None else ambiguous
        return [
            Result(i.recipient.delivery_id, outcome, error=error, error_code=status, retry_after_s=wait, ambiguous=flag)
            for i in chunk
        ]

    def _isolate(self, chunk: list[_Item], answer: _Answer, work: deque[list[_Item]]) -> list[Result]:
        """A 400: fail the personalizations it names and send the rest again; bisect when it names none."""
        blamed: dict[int, list[tuple[str, str | None]]] = {}
        unplaced = []
        for message, where in answer.errors:
            match = _PERSONALIZATION_FIELD.match(where or "")
            if match and int(match.group(1)) < len(chunk):
                blamed.setdefault(int(match.group(1)), []).append((message, where))
            else:
                unplaced.append((message, where))
        if blamed:
            failed = [
                _fail(chunk[index].recipient, _describe(400, errors), 400) for index, errors in sorted(blamed.items())
            ]
            rest = [item for index, item in enumerate(chunk) if index not in blamed]
            if rest:
                work.appendleft(rest)
            return failed
        about_recipients = all(where is None or where.startswith("personalizations") for _, where in unplaced)
        if len(chunk) > 1 and about_recipients:
            half = len(chunk) // 2
            work.extendleft([chunk[half:], chunk[:half]])
            return []
        return self._results(chunk, answer)

    def _request(self, body: Mapping[str, Any]) -> Any:
        """POST /v3/mail/send with the official client's URL, headers (key, user agent), request and error
        mapping (its HTTPError subclasses), but not its ``http_request`` wrapper: that one formats the whole
        payload into a DEBUG message whether or not DEBUG is on (``'PAYLOAD: {data}'.format(...)``), which
        for a packed digest request (8-10 MB) cost about as much CPU as encoding it as JSON.

        The body is encoded by orjson (3x faster than json on a packed request): compact UTF-8, never
        longer than ``json.dumps``'s ASCII-escaped output that ``prepare`` and ``plan`` bound the size by."""
        from python_http_client.client import Response

        endpoint = self._client.client.mail.send
        headers = {**endpoint.request_headers, "Content-Type": "application/json"}
        data = jsontext.dumps(body)  # a lone surrogate (not UTF-8): json.dumps escapes it as \udXXX
        # The URL is the configured SendGrid host (https; the stand-in in tests), never user input.
        request = urllib.request.Request(endpoint._build_url(None), data=data, headers=headers, method="POST")  # noqa: S310
        return Response(endpoint._make_request(urllib.request.build_opener(), request, timeout=self.timeout_s))

    def _post(self, base: Mapping[str, Any], chunk: Sequence[_Item]) -> _Answer:
        from python_http_client.exceptions import HTTPError

        body = dict(base)
        body["personalizations"] = [i.body for i in chunk]
        started = time.monotonic()
        try:
            response = self._request(body)
            self.timings["http_s"] += time.monotonic() - started
        except HTTPError as exc:
            status = int(exc.status_code)
            self.answers[str(status)] += 1
            errors = _provider_errors(exc.body)
            text = _describe(status, errors)
            log.warning("sendgrid.refused", status=status, recipients=len(chunk), error=text)
            if status == 429 or status >= 500:
                return _Answer("retry", status, error=text, retry_after_s=parse_retry_after(exc.headers))
            return _Answer("failed", status, error=text, errors=errors)
        except urllib.error.URLError as exc:
            # Raised while connecting or sending the request: SendGrid cannot have accepted it.
            self.answers[UNREACHABLE] += 1
            reason = exc.reason
            error = f"SendGrid unreachable: {type(reason).__name__}: {reason}"[:500]
            log.warning("sendgrid.unreachable", recipients=len(chunk), error=error)
            return _Answer("retry", error=error)
        except (TimeoutError, http.client.HTTPException, OSError) as exc:
            # The request went out and no complete answer came back: it may have been accepted.
            self.answers[TIMEOUT] += 1
            error = f"no answer from SendGrid ({type(exc).__name__}); acceptance unknown"
            log.warning("sendgrid.ambiguous", recipients=len(chunk), error=error, waited_s=time.monotonic() - started)
            return _Answer("retry", error=error, ambiguous=True)
        # Accepted: nothing below may raise, or the batch would be retried and sent twice.
        message_id: str | None = None
        try:
            self.answers[str(response.status_code)] += 1
            raw_id = response.headers.get("X-Message-Id")
            message_id = str(raw_id)[:200] if raw_id else None
            log.info("sendgrid.accepted", status=response.status_code, recipients=len(chunk), message_id=message_id)
        except Exception:  # noqa: S110 - acceptance is recorded whatever the headers (or logging) do
            pass
        return _Answer("accepted", 202, message_id=message_id)
