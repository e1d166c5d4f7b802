"""A polite client of ClinicalTrials.gov's API v2: ``/version``, ``/studies`` page by page, ``/studies/{nctId}``.

Polite means: a User-Agent naming us and a contact, at most ``rate_per_s`` requests per second, and on
429 / 5xx / timeouts / connection resets a retry after an exponential backoff that never comes sooner than
the registry's ``Retry-After``. A page that arrives broken (truncated JSON, not the documented shape) is
fetched again the same way; one that stays broken raises ``RegistryError`` with a reason an operator can
read. Synchronous on purpose: a watcher pass is one sequential walk through pages, run by a Celery task or
the CLI (it asks for the next page from a thread of its own while it applies one: still one request at a
time; ``close`` ends a wait in progress there).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any, Final

import httpx
import orjson

# What the service reads of a record (alerts.ctgov, alerts.vocabulary, alerts.matching): asking for these
# pieces only keeps a page of 1,000 records a few MB instead of tens (results and documents are large).
WATCH_FIELDS: Final = (
    "IdentificationModule",
    "StatusModule",
    "SponsorCollaboratorsModule",
    "BriefSummary",
    "ConditionsModule",
    "DesignModule",
    "ArmsInterventionsModule",
    "EligibilityModule",
    "ContactsLocationsModule",
    "ConditionBrowseModule",
    "HasResults",
)
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
# A Retry-After longer than this ends the pass instead of holding a worker (the next pass resumes).
MAX_WAIT_S: Final = 600.0


class RegistryError(Exception):
    """The registry could not be read; ``reason`` is shown to operators (alerts status, /ops)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenRefused(RegistryError):
    """The registry refused a page token (400): it expired or the data changed under it."""


@dataclass(frozen=True)
class Version:
    api_version: str
    data_timestamp: str | None


@dataclass(frozen=True)
class Page:
    studies: list[dict[str, Any]]
    next_token: str | None
    total: int | None


def advanced_filter(since: date) -> str:
    """Essie expression for records last updated on or after ``since`` (a date: the registry has no times)."""
    return f"AREA[LastUpdatePostDate]RANGE[{since.isoformat()},MAX]"


def user_agent(contact: str | None) -> str:
    try:
        ours = package_version("trial-alerts")
    except PackageNotFoundError:  # running from a source tree that was never installed
        ours = "0"
    return f"trial-alerts/{ours} (+{contact})" if contact else f"trial-alerts/{ours}"


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# An integer of 19 digits or more may not fit 64 bits: orjson would read it as a float, json as an int.
# Found as 19 zeros in the text with every digit made "0" and everything else " ": two passes at memory
# speed, 8x faster than the regular expression [0-9]{19} (which was as slow as orjson's whole parse).
_DIGITS_ONLY: Final = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN: Final = b"0" * 19


def _long_number(data: bytes) -> bool:
    return _LONG_RUN in data.translate(_DIGITS_ONLY)


def loads(data: bytes) -> Any:
    """JSON as Python's json reads it, mostly by orjson (~3x faster on a page of 1,000 records or a stored
    snapshot): json reads what orjson refuses or would read differently (lone surrogates in strings,
    integers beyond 64 bits). Raises json.JSONDecodeError for what neither reads."""
    if _long_number(data):
        return json.loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _loads(response: httpx.Response) -> Any:
    """The body as JSON (``loads``): a record with a lone surrogate is then rejected alone by the intake,
    not the whole page."""
    return loads(response.content)


def _page(data: Any) -> Page:
    """The documented PagedStudies shape, or ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    studies = data.get("studies")
    if not isinstance(studies, list):
        raise ValueError("'studies' is missing or not a list")
    token = data.get("nextPageToken")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("'nextPageToken' is not a non-empty string")
    total = data.get("totalCount")
    return Page(studies, token, total if isinstance(total, int) else None)


class RegistryClient:
    """One registry, one HTTP connection pool. ``alive`` is called while waiting (the pass's lock heartbeat)."""

    def __init__(
        self,
        base_url: str,
        *,
        contact: str | None = None,
        rate_per_s: float = 1.0,
        timeout_s: float = 30.0,
        retries: int = 5,
        retry_base_s: float = 2.0,
        sleep: Callable[[float], object] | None = None,
        alive: Callable[[], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.min_interval_s = 1.0 / rate_per_s
        self.retries = retries
        self.retry_base_s = retry_base_s
        # Closing wakes a wait in progress (the pass's next-page request, in its own thread, when the pass
        # ends) and no request is sent after it: a finished or failed pass never waits out a backoff.
        self._closed = threading.Event()
        self.sleep = sleep or self._closed.wait
        self.alive = alive
        self.requests = 0  # sent, retries included (operators see it per pass)
        self.retried = 0
        self._last_request = -float("inf")
        self._http = httpx.Client(
            timeout=timeout_s,
            headers={"User-Agent": user_agent(contact), "Accept": "application/json"},
            transport=transport,
        )

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._http.close()

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            if self.alive is not None:
                self.alive()
            self.sleep(seconds)

    def _pace(self) -> None:
        self._wait(self._last_request + self.min_interval_s - time.monotonic())
        self._last_request = time.monotonic()

    def _get_json(self, path: str, params: Mapping[str, str], what: str, check: Callable[[Any], Any]) -> Any:
        """GET, retried on what may pass (429, 5xx, transport errors, broken bodies); ``check`` parses."""
        from alerts.pipeline import backoff_seconds

        url = f"{self.base_url}{path}"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            self._pace()
            if self._closed.is_set():
                raise RegistryError(f"{what}: not sent, the client was closed")
            self.requests += 1
            asked: float | None = None
            try:
                response = self._http.get(url, params=params)
            except httpx.TimeoutException as exc:
                problem = f"{what}: no answer in time ({type(exc).__name__})"
            except httpx.TransportError as exc:
                problem = f"{what}: connection failed ({type(exc).__name__}: {exc})"
            else:
                if response.status_code == 200:
                    try:
                        return check(_loads(response))
                    except ValueError as exc:  # json.JSONDecodeError is a ValueError
                        kind = "truncated or invalid JSON" if isinstance(exc, json.JSONDecodeError) else "wrong shape"
                        problem = f"{what}: {kind} ({str(exc)[:200]})"
                elif response.status_code in RETRY_STATUSES:
                    asked = retry_after_s(response.headers.get("Retry-After"))
                    problem = f"{what}: HTTP {response.status_code}"
                    if asked is not None:
                        problem += f" (Retry-After {asked:.0f} s)"
                        if asked > MAX_WAIT_S:
                            raise RegistryError(problem + "; too long to wait, the next pass carries on")
                else:
                    text = response.text[:200].strip()
                    if response.status_code == 400 and "pageToken" in params:
                        raise TokenRefused(f"{what}: page token refused (HTTP 400: {text})")
                    # 4xx other than 429 will not pass by asking again: our request is wrong.
                    raise RegistryError(f"{what}: HTTP {response.status_code} ({text})")
            if attempt < self.retries:
                self._wait(backoff_seconds(attempt, asked, cap=300.0, base=self.retry_base_s))
        raise RegistryError(f"{problem}; gave up after {self.retries + 1} attempts")

    def version(self) -> Version:
        def check(data: Any) -> Version:
            if not isinstance(data, dict) or not isinstance(data.get("apiVersion"), str):
                raise ValueError("expected an object with 'apiVersion'")
            stamp = data.get("dataTimestamp")
            return Version(data["apiVersion"], stamp if isinstance(stamp, str) and stamp else None)

        result: Version = self._get_json("/version", {}, "GET /version", check)
        return result

    def studies_page(
        self,
        *,
        since: date | None,
        page_token: str | None = None,
        page_size: int = 1000,
        fields: Sequence[str] = WATCH_FIELDS,
        sort: str | None = None,
        count_total: bool = False,
    ) -> Page:
        """One page of ``GET /studies``; every page of a walk must repeat the first page's parameters."""
        params: dict[str, str] = {"format": "json", "pageSize": str(page_size)}
        if since is not None:
            params["filter.advanced"] = advanced_filter(since)
        if fields:
            params["fields"] = "|".join(fields)
        if sort:
            params["sort"] = sort
        if count_total:
            params["countTotal"] = "true"
        if page_token:
            params["pageToken"] = page_token
        what = "GET /studies" + (" (next page)" if page_token else " (first page)")
        page: Page = self._get_json("/studies", params, what, _page)
        return page

    def study(self, nct_id: str, fields: Sequence[str] = WATCH_FIELDS) -> dict[str, Any]:
        def check(data: Any) -> dict[str, Any]:
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            return data

        params = {"format": "json", "fields": "|".join(fields)} if fields else {"format": "json"}
        record: dict[str, Any] = self._get_json(f"/studies/{nct_id}", params, f"GET /studies/{nct_id}", check)
        return record
