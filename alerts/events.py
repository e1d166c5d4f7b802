"""The public event contract: JSON Schemas (shipped in ``alerts/schemas``) and parsing into typed events.

Every problem is reported as ``FieldError(field, message)`` so an operator can see which field was wrong
and why; see docs/events.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Final

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from alerts import jsontext
from alerts import text as text_module

TRIAL_CHANGED: Final = "trial.changed"
NEW_TRIAL_FOR_CONDITION: Final = "trial.new_for_condition"
EVENT_TYPES: Final = (TRIAL_CHANGED, NEW_TRIAL_FOR_CONDITION)
# A full v2 record with results is a few hundred KB; anything near this is hostile or broken.
MAX_EVENT_BYTES: Final = 4_000_000
_SCHEMA_BASE = "https://trial-alerts.example.org/schemas/"


def printable(text: str, limit: int = 300) -> str:
    """Control characters and lone surrogates shown as escapes, length bounded: safe to store, log and show."""
    shown = text_module.escaped(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def __post_init__(self) -> None:
        # Field names and messages can echo hostile input (keys with NUL bytes...).
        object.__setattr__(self, "field", printable(self.field))
        object.__setattr__(self, "message", printable(self.message))

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class InvalidEvent(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class TrialEvent:
    type: str
    idempotency_key: str
    event_id: str | None
    occurred_at: datetime
    trial: Mapping[str, Any]
    previous: Mapping[str, Any] | None = None
    condition: str | None = None

    @property
    def nct_id(self) -> str:
        return str(self.trial["protocolSection"]["identificationModule"]["nctId"])


def schema_text(name: str) -> str:
    return resources.files("alerts.schemas").joinpath(f"{name}.json").read_text(encoding="utf-8")


@cache
def _validators() -> dict[str, Draft202012Validator]:
    docs = {n: json.loads(schema_text(n)) for n in ("trial-record", *EVENT_TYPES)}
    registry: Registry[Any] = Registry().with_resources(
        (_SCHEMA_BASE + f"{name}.json", Resource.from_contents(doc)) for name, doc in docs.items()
    )
    return {t: Draft202012Validator(docs[t], registry=registry) for t in EVENT_TYPES}


@cache
def _fast_validators() -> dict[str, Any]:
    """The same schemas compiled by jsonschema-rs: ~100x faster at saying "valid", which almost every event
    is. Only its yes is trusted; on a no, ``jsonschema`` decides and names the fields (``parse_event``)."""
    docs = {n: json.loads(schema_text(n)) for n in ("trial-record", *EVENT_TYPES)}
    registry = jsonschema_rs.Registry(
        [(_SCHEMA_BASE + f"{name}.json", doc) for name, doc in docs.items()], draft=jsonschema_rs.Draft202012
    )
    # Formats are not checked by the reference validator either (jsonschema's default).
    return {
        t: jsonschema_rs.Draft202012Validator(docs[t], registry=registry, validate_formats=False) for t in EVENT_TYPES
    }


def _surely_valid(event_type: str, payload: Any) -> bool:
    try:
        return bool(_fast_validators()[event_type].is_valid(payload))
    except ValueError:  # a lone surrogate cannot cross into Rust: the reference validator takes it
        return False


# What a control character looks like in ``canonical_json``'s text: \u00XX, \b, \f, a raw DEL. (A lone
# surrogate is found by UTF-8 refusing the text.) None of them: every string and key is clean. One (maybe an
# escaped backslash followed by "u00"): the walk below decides and names the field. Substring searches,
# not a regular expression: 50 us instead of 400 on a 17 KB record, which every registry record is.
_MAYBE_UNCLEAN: Final = ("\\u00", "\\b", "\\f", "\x7f")


def _maybe_unclean(text: str) -> bool:
    return any(sign in text for sign in _MAYBE_UNCLEAN)


def _field_of(error: ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        required: list[str] = list(error.validator_value) if isinstance(error.validator_value, list) else []
        missing = [r for r in required if r not in error.instance]
        if missing:
            return f"{path}.{missing[0]}" if path else str(missing[0])
    return path or "(event)"


def _message_of(error: ValidationError) -> str:
    """A reason that never echoes the rejected value: it is logged and shown, and may hold an address."""
    rule, expected = error.validator, error.validator_value
    if rule == "required":
        return "is required"
    if rule == "pattern" and _field_of(error).endswith("nctId"):
        return "must look like NCT followed by 8 digits"
    messages = {
        "maxLength": f"is longer than {expected} characters",
        "minLength": f"is shorter than {expected} characters",
        "type": f"must be of type {expected}",
        "const": f"must be {expected!r}",
        "pattern": "does not have the required form",
        "maxItems": f"has more than {expected} items",
        "minItems": f"has fewer than {expected} items",
        "enum": "is not one of the allowed values",
    }
    return messages.get(str(rule), f"is invalid ({rule})")


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2026-11-25T10:00:00Z")
    return parsed.astimezone(UTC)


def _strings_clean(value: Any, path: str, out: list[FieldError]) -> None:
    """NUL and other control characters, and lone surrogates, in any string or key are refused (PostgreSQL
    cannot store NUL; a lone surrogate cannot be written as UTF-8 at all)."""
    if len(out) >= 5:
        return
    if isinstance(value, str):
        reason = text_module.problem(value)
        if reason:
            out.append(FieldError(path or "(event)", reason))
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            reason = text_module.problem(key) if isinstance(key, str) else None
            if reason:
                out.append(FieldError(where, f"has a key that {reason}"))
                continue
            _strings_clean(item, where, out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _strings_clean(item, f"{path}.{index}", out)


def canonical_json(value: Any) -> str:
    return jsontext.canonical(value)


def parse_event(payload: Any, expected_type: str | None = None, *, serialized: str | None = None) -> TrialEvent:
    """Validate ``payload`` and return the typed event, or raise InvalidEvent naming every bad field.

    ``serialized``: ``canonical_json(payload)``, when the caller already has it (the registry watcher).
    """
    if not isinstance(payload, dict):
        raise InvalidEvent([FieldError("(event)", f"must be a JSON object, got {type(payload).__name__}")])
    try:
        if serialized is None:
            serialized = canonical_json(payload)
        surrogate = False
        try:
            size = len(serialized.encode("utf-8"))
        except UnicodeEncodeError:
            # A lone surrogate: reported below with its field, not as an encoding error here.
            size, surrogate = len(serialized.encode("utf-8", "surrogatepass")), True
    except (TypeError, ValueError) as exc:
        raise InvalidEvent([FieldError("(event)", f"is not JSON-serializable: {exc}")]) from None
    if size > MAX_EVENT_BYTES:
        raise InvalidEvent([FieldError("(event)", f"is {size} bytes; the limit is {MAX_EVENT_BYTES}")])
    event_type = payload.get("type")
    if event_type not in EVENT_TYPES:
        raise InvalidEvent([FieldError("type", f"must be one of {', '.join(EVENT_TYPES)}")])
    if expected_type is not None and event_type != expected_type:
        raise InvalidEvent([FieldError("type", f"is {event_type!r} but was sent to the {expected_type} task")])

    found: list[FieldError] = []
    if not _surely_valid(event_type, payload):
        errors = sorted(_validators()[event_type].iter_errors(payload), key=lambda e: list(e.absolute_path))
        found = [FieldError(_field_of(e), _message_of(e)) for e in errors[:10]]
    if surrogate or _maybe_unclean(serialized):
        _strings_clean(payload, "", found)
    occurred_at: datetime | None = None
    if isinstance(payload.get("occurred_at"), str):
        try:
            occurred_at = _parse_time(payload["occurred_at"])
        except ValueError as exc:
            reason = str(exc) if str(exc).startswith("needs a UTC offset") else "e.g. 2026-11-25T10:00:00Z"
            found.append(FieldError("occurred_at", f"is not an ISO 8601 date-time: {reason}"))
    if found:
        raise InvalidEvent(found)
    assert occurred_at is not None

    event_id = payload.get("event_id")
    if event_id:
        key = f"{event_type}:id:{event_id}"
    else:
        # Without a producer id, identical payloads are the same event (a producer retry).
        key = f"{event_type}:sha256:{hashlib.sha256(serialized.encode()).hexdigest()}"
    # Only trial.changed has a previous version; the schema validated it there and nowhere else.
    previous = payload.get("previous") if event_type == TRIAL_CHANGED else None
    if previous is not None:
        prev_id = previous["protocolSection"]["identificationModule"]["nctId"]
        this_id = payload["trial"]["protocolSection"]["identificationModule"]["nctId"]
        if prev_id != this_id:
            raise InvalidEvent(
                [
                    FieldError(
                        "previous.protocolSection.identificationModule.nctId",
                        f"is {prev_id} but trial is {this_id}",
                    )
                ]
            )
    return TrialEvent(
        type=event_type,
        idempotency_key=key,
        event_id=event_id,
        occurred_at=occurred_at,
        trial=payload["trial"],
        previous=previous,
        condition=payload["condition"] if event_type == NEW_TRIAL_FOR_CONDITION else None,
    )


def excerpt(payload: Any, limit: int = 2000) -> str:
    """What operators see of a rejected payload: enough to recognise it, bounded in size."""
    try:
        # ASCII escapes: NUL and other control characters cannot reach the database as raw bytes.
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError):
        text = printable(repr(payload), limit)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
