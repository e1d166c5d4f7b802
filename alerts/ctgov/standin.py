"""A local stand-in for ClinicalTrials.gov's API v2, for the demo, the tests and the benchmark.

``RegistryStandIn`` is a small ``ThreadingHTTPServer`` on 127.0.0.1 (ephemeral port by default) serving the
records it is given the way the registry does (its tests check every answer against the registry's
official OpenAPI file):

* ``GET /api/v2/version``: ``{"apiVersion", "dataTimestamp"}``;
* ``GET /api/v2/studies``: ``format=json``; ``filter.advanced`` with ``AREA[LastUpdatePostDate]RANGE[a,b]``
  (``MIN``/``MAX`` allowed; any other expression is refused with 400, so a client asking for something the
  stand-in cannot answer learns it at once); ``fields`` (area, piece and field names below, comma- or
  pipe-separated); ``sort`` on ``LastUpdatePostDate`` (``:asc``/``:desc``); ``pageSize`` (default 10,
  at most 1,000); opaque ``pageToken`` tied to the query (a token used with other parameters gets 400);
  ``countTotal`` (``totalCount`` on the first page);
* ``GET /api/v2/studies/{nctId}``: one record, 404 when unknown.

"The registry's day" moves with ``advance_day(edited)``: the data timestamp moves a day on and the edited or
new records are stored with that day as their ``LastUpdatePostDate``. ``inject(fault, times)`` makes the
next requests fail: ``429`` (with ``Retry-After``), ``500``, ``503``, ``timeout`` (answers after the
client's timeout), ``reset`` (the connection is cut before any answer), ``truncated`` (a 200 whose JSON stops
halfway) and ``shape`` (a 200 that is JSON but not a page of studies).

The package never imports from ``tests/``; this module lives here so ``alerts demo`` can use it too.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson

API_PREFIX: Final = "/api/v2"
API_VERSION: Final = "2.0.3"
# Piece and field names (as on the registry's "Data Structure" page) -> where they sit in a record.
PIECES: Final[dict[str, tuple[str, ...]]] = {
    "protocolsection": ("protocolSection",),
    "derivedsection": ("derivedSection",),
    "resultssection": ("resultsSection",),
    "annotationsection": ("annotationSection",),
    "documentsection": ("documentSection",),
    "hasresults": ("hasResults",),
    **{
        name.lower(): ("protocolSection", name[0].lower() + name[1:])
        for name in (
            "IdentificationModule",
            "StatusModule",
            "SponsorCollaboratorsModule",
            "OversightModule",
            "DescriptionModule",
            "ConditionsModule",
            "DesignModule",
            "ArmsInterventionsModule",
            "OutcomesModule",
            "EligibilityModule",
            "ContactsLocationsModule",
            "ReferencesModule",
            "IpdSharingStatementModule",
        )
    },
    **{
        name.lower(): ("derivedSection", name[0].lower() + name[1:])
        for name in ("MiscInfoModule", "ConditionBrowseModule", "InterventionBrowseModule")
    },
    "nctid": ("protocolSection", "identificationModule", "nctId"),
    "brieftitle": ("protocolSection", "identificationModule", "briefTitle"),
    "officialtitle": ("protocolSection", "identificationModule", "officialTitle"),
    "overallstatus": ("protocolSection", "statusModule", "overallStatus"),
    "briefsummary": ("protocolSection", "descriptionModule", "briefSummary"),
    "condition": ("protocolSection", "conditionsModule", "conditions"),
    "lastupdatepostdate": ("protocolSection", "statusModule", "lastUpdatePostDateStruct"),
    "studyfirstpostdate": ("protocolSection", "statusModule", "studyFirstPostDateStruct"),
}
_RANGE = re.compile(r"^\s*AREA\[LastUpdatePostDate\]RANGE\[\s*([^,\]]+?)\s*,\s*([^\]]+?)\s*\]\s*$", re.IGNORECASE)
_NCT = re.compile(r"^(NCT|nct)\d{8}$")
FAULTS: Final = ("429", "500", "503", "timeout", "reset", "truncated", "shape")


def _get(record: Mapping[str, Any], *path: str) -> Any:
    value: Any = record
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def nct_id(record: Mapping[str, Any]) -> str:
    return str(_get(record, "protocolSection", "identificationModule", "nctId"))


def last_update(record: Mapping[str, Any]) -> str | None:
    value = _get(record, "protocolSection", "statusModule", "lastUpdatePostDateStruct", "date")
    return value if isinstance(value, str) else None


def stamp(record: dict[str, Any], day: date, first_posted: bool = False) -> dict[str, Any]:
    """``record`` as posted on ``day``: its last update (and with ``first_posted``, its first post) dates."""
    status = record.setdefault("protocolSection", {}).setdefault("statusModule", {})
    status["lastUpdateSubmitDate"] = day.isoformat()
    status["lastUpdatePostDateStruct"] = {"date": day.isoformat(), "type": "ACTUAL"}
    if first_posted:
        status["studyFirstSubmitDate"] = status["studyFirstSubmitQcDate"] = day.isoformat()
        status["studyFirstPostDateStruct"] = {"date": day.isoformat(), "type": "ACTUAL"}
    return record


def project(record: Mapping[str, Any], paths: list[tuple[str, ...]]) -> dict[str, Any]:
    """Only the requested pieces of ``record``, nested where they live (as ``fields`` does)."""
    out: dict[str, Any] = {}
    for path in paths:
        value = _get(record, *path)
        if value is None:
            continue
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


class BadRequest(Exception):
    pass


def _range_bound(text: str, low: bool) -> str:
    if text.upper() in ("MIN", "MAX"):
        return "" if text.upper() == "MIN" else "9999-12-31"
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise BadRequest(f"bad date in RANGE: {text!r}") from None


@dataclass
class Fault:
    kind: str
    path: str  # applies to requests whose path (after /api/v2) starts with this
    retry_after: str | None = None


class RegistryStandIn:
    """Serve ``records`` like the registry. Thread-safe: tests change it while a pass reads it."""

    def __init__(
        self,
        records: Iterable[Mapping[str, Any]] = (),
        data_timestamp: str = "2026-11-27T09:00:00",
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_fault_s: float = 3.0,
    ) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        # NCT ID -> field set -> the record's JSON: a page is a join of cached pieces, not a dump.
        self._serialized: dict[str, dict[tuple[tuple[str, ...], ...], bytes]] = {}
        self.data_timestamp = data_timestamp
        self.timeout_fault_s = timeout_fault_s
        self._faults: deque[Fault] = deque()
        self.requests: list[tuple[str, dict[str, str], int]] = []  # path, query, status
        self.user_agents: set[str] = set()
        self.put(records)
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def do_GET(self) -> None:
                standin._handle(self)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- the data ---------------------------------------------------------------------------------

    def put(self, records: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for record in records:
                key = nct_id(record)
                self._records[key] = copy.deepcopy(dict(record))
                self._serialized.pop(key, None)

    def remove(self, nct: str) -> None:
        with self._lock:
            self._records.pop(nct, None)
            self._serialized.pop(nct, None)

    def record(self, nct: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._records.get(nct)
            return copy.deepcopy(found) if found is not None else None

    def __len__(self) -> int:
        return len(self._records)

    @property
    def today(self) -> date:
        return datetime.fromisoformat(self.data_timestamp).date()

    def advance_day(self, edited: Iterable[Mapping[str, Any]] = (), new: Iterable[Mapping[str, Any]] = ()) -> date:
        """The registry's next daily refresh: ``edited`` records updated and ``new`` ones first posted that day."""
        moved = datetime.fromisoformat(self.data_timestamp) + timedelta(days=1)
        day = moved.date()
        changed = [stamp(copy.deepcopy(dict(r)), day) for r in edited]
        changed += [stamp(copy.deepcopy(dict(r)), day, first_posted=True) for r in new]
        self.put(changed)
        self.data_timestamp = moved.isoformat(timespec="seconds")
        return day

    # --- faults -----------------------------------------------------------------------------------

    def inject(self, kind: str, times: int = 1, path: str = "/studies", retry_after: str | None = "1") -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        with self._lock:
            self._faults.extend(Fault(kind, path, retry_after) for _ in range(times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _fault_for(self, path: str) -> Fault | None:
        with self._lock:
            if self._faults and path.startswith(self._faults[0].path):
                return self._faults.popleft()
        return None

    # --- serving ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{API_PREFIX}"

    def start(self) -> RegistryStandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, name="registry-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RegistryStandIn:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = parts.path.removeprefix(API_PREFIX) if parts.path.startswith(API_PREFIX + "/") else None
        fault = self._fault_for(path) if path is not None else None
        with self._lock:
            self.user_agents.add(handler.headers.get("User-Agent", ""))
        status, body, content_type, headers = 404, b"Not found", "text/plain", {}
        if fault is not None and fault.kind in ("reset", "timeout"):
            if fault.kind == "timeout":
                time.sleep(self.timeout_fault_s)
            self._record(parts.path, query, 0)
            # SO_LINGER 0: closing sends a TCP reset instead of a clean end of stream.
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            handler.connection.close()
            return
        if fault is not None and fault.kind in ("429", "500", "503"):
            status, body = int(fault.kind), b"Too many requests" if fault.kind == "429" else b"Server error"
            if fault.kind == "429" and fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
        elif path is not None:
            try:
                status, body, content_type = self._route(path, query)
            except BadRequest as exc:
                status, body, content_type = 400, str(exc).encode(), "text/plain"
            if fault is not None and status == 200 and fault.kind == "truncated":
                body = body[: max(1, len(body) // 2)]
            elif fault is not None and status == 200 and fault.kind == "shape":
                body = json.dumps({"studies": {"error": "not a list"}, "nextPageToken": 7}).encode()
        self._record(parts.path, query, status)
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _record(self, path: str, query: dict[str, str], status: int) -> None:
        with self._lock:
            self.requests.append((path, query, status))

    def _route(self, path: str, query: dict[str, str]) -> tuple[int, bytes, str]:
        if path == "/version":
            body = {"apiVersion": API_VERSION, "dataTimestamp": self.data_timestamp}
            return 200, json.dumps(body).encode(), "application/json"
        if path == "/studies":
            return 200, self._studies(query), "application/json"
        if path.startswith("/studies/"):
            nct = path.removeprefix("/studies/")
            if not _NCT.match(nct):
                raise BadRequest(f"invalid NCT number: {nct}")
            self._format(query)
            paths = self._fields(query.get("fields"))
            with self._lock:
                record = self._records.get(nct.upper())
            if record is None:
                return 404, f"Study {nct.upper()} not found".encode(), "text/plain"
            return 200, json.dumps(project(record, paths) if paths else record).encode(), "application/json"
        return 404, b"Not found", "text/plain"

    @staticmethod
    def _format(query: Mapping[str, str]) -> None:
        if query.get("format", "json") != "json":
            raise BadRequest("the stand-in serves format=json only")

    @staticmethod
    def _fields(value: str | None) -> list[tuple[str, ...]]:
        if value is None:
            return []
        names = [n.strip() for n in re.split(r"[|,]", value) if n.strip()]
        if not names:
            raise BadRequest("fields must be a non-empty list")
        unknown = [n for n in names if n.lower() not in PIECES]
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
        return [PIECES[n.lower()] for n in names]

    def _studies(self, query: Mapping[str, str]) -> bytes:
        self._format(query)
        low, high = "", "9999-12-31"
        advanced = query.get("filter.advanced")
        if advanced:
            match = _RANGE.match(advanced)
            if match is None:
                raise BadRequest("the stand-in understands AREA[LastUpdatePostDate]RANGE[from,to] only")
            low, high = _range_bound(match.group(1), True), _range_bound(match.group(2), False)
        paths = self._fields(query.get("fields"))
        sort = query.get("sort", "")
        if sort and sort.split(":")[0].lower() != "lastupdatepostdate":
            raise BadRequest("the stand-in sorts on LastUpdatePostDate only")
        try:
            size = int(query.get("pageSize") or 10) or 10
        except ValueError:
            raise BadRequest("pageSize must be an integer") from None
        if size < 0:
            raise BadRequest("pageSize must be >= 0")
        size = min(size, 1000)
        # A token carries its offset and the query it belongs to (the registry's rule: same parameters).
        signature = hashlib.sha256(f"{advanced}|{query.get('fields')}|{sort}".encode()).hexdigest()[:16]
        offset = 0
        token = query.get("pageToken")
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                offset, signed = int(decoded["o"]), str(decoded["q"])
            except (ValueError, KeyError, TypeError):
                raise BadRequest("invalid pageToken") from None
            if signed != signature:
                raise BadRequest("pageToken belongs to another query")
        with self._lock:
            matching = [
                (last_update(r) or "", key, r)
                for key, r in self._records.items()
                if low <= (last_update(r) or "") <= high
            ]
            if sort:
                descending = not sort.lower().endswith(":asc")  # dates sort newest first by default
                matching.sort(key=lambda item: (item[0], item[1]), reverse=descending)
            else:
                matching.sort(key=lambda item: item[1])
            chosen = matching[offset : offset + size]
            field_key = tuple(paths)
            pieces = []
            for _, key, record in chosen:
                by_fields = self._serialized.setdefault(key, {})
                cached = by_fields.get(field_key)
                if cached is None:
                    # orjson: the stand-in shares the machine with the pass it serves (benchmarks).
                    cached = by_fields[field_key] = orjson.dumps(project(record, paths) if paths else record)
                pieces.append(cached)
        head: dict[str, Any] = {}
        if query.get("countTotal", "").lower() == "true" and not token:
            head["totalCount"] = len(matching)
        if offset + size < len(matching):
            head["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps({"o": offset + size, "q": signature}).encode()
            ).decode()
        # Records serialized once per field set and joined: a page of 1,000 costs a join, not a dump.
        prefix = json.dumps(head)[:-1] + (", " if head else "") + '"studies": ['
        return prefix.encode() + b",".join(pieces) + b"]}"
