import copy
from typing import Any

import pytest

from alerts.events import MAX_EVENT_BYTES, InvalidEvent, parse_event
from tests.conftest import all_studies, study
from tests.factories import changed_event, new_trial_event


def minimal() -> dict[str, Any]:
    return {"protocolSection": {"identificationModule": {"nctId": "NCT01234567", "briefTitle": "A study"}}}


def errors_of(payload: Any) -> dict[str, str]:
    with pytest.raises(InvalidEvent) as info:
        parse_event(payload)
    return {e.field: e.message for e in info.value.errors}


def test_every_real_record_is_a_valid_event() -> None:
    for record in all_studies():
        event = parse_event(changed_event(record))
        assert event.nct_id == record["protocolSection"]["identificationModule"]["nctId"]


def test_only_nct_id_and_brief_title_are_required() -> None:
    event = parse_event(new_trial_event(minimal(), "Asthma"))
    assert event.nct_id == "NCT01234567"
    assert event.condition == "Asthma"
    assert event.occurred_at.tzinfo is not None


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (
            lambda e: e["trial"]["protocolSection"]["identificationModule"].update(nctId="NCT123"),
            "trial.protocolSection.identificationModule.nctId",
            "NCT followed by 8 digits",
        ),
        (
            lambda e: e["trial"]["protocolSection"]["identificationModule"].pop("briefTitle"),
            "trial.protocolSection.identificationModule.briefTitle",
            "is required",
        ),
        (
            lambda e: e["trial"]["protocolSection"].pop("identificationModule"),
            "trial.protocolSection.identificationModule",
            "is required",
        ),
        (lambda e: e.pop("trial"), "trial", "is required"),
        (lambda e: e.update(occurred_at="yesterday"), "occurred_at", "ISO 8601"),
        (lambda e: e.update(occurred_at="2026-11-20T10:00:00"), "occurred_at", "UTC offset"),
        (lambda e: e.update(trial="NCT01234567"), "trial", "must be of type object"),
        (
            lambda e: e["trial"]["protocolSection"]["identificationModule"].update(briefTitle="   "),
            "trial.protocolSection.identificationModule.briefTitle",
            "required form",
        ),
        (
            lambda e: e["trial"]["protocolSection"]["identificationModule"].update(briefTitle="x" * 1001),
            "trial.protocolSection.identificationModule.briefTitle",
            "longer than 1000",
        ),
        (
            lambda e: e["trial"]["protocolSection"]["identificationModule"].update(briefTitle="a\x00b"),
            "trial.protocolSection.identificationModule.briefTitle",
            "control character",
        ),
        (
            lambda e: e["trial"]["protocolSection"]["identificationModule"].update(briefTitle="a\udcffb"),
            "trial.protocolSection.identificationModule.briefTitle",
            "lone surrogate",
        ),
        (lambda e: e.update(event_id=""), "event_id", "required form"),
    ],
)
def test_invalid_events_name_the_field_and_the_reason(mutate: Any, field: str, message: str) -> None:
    event = changed_event(study("NCT00124774"))
    mutate(event)
    found = errors_of(event)
    assert field in found, found
    assert message in found[field]


def test_type_and_shape_errors() -> None:
    assert "must be a JSON object" in errors_of([1, 2])["(event)"]
    assert "must be one of" in errors_of({"type": "trial.deleted"})["type"]
    assert (
        "is required"
        in errors_of({"type": "trial.new_for_condition", "occurred_at": "2026-01-01T00:00:00Z", "trial": minimal()})[
            "condition"
        ]
    )


def test_oversized_events_are_refused_before_schema_work() -> None:
    event = changed_event(minimal())
    event["trial"]["protocolSection"]["descriptionModule"] = {"detailedDescription": "x" * MAX_EVENT_BYTES}
    assert "limit" in errors_of(event)["(event)"]


def test_previous_must_be_the_same_trial() -> None:
    other = study("NCT00763412")
    found = errors_of(changed_event(study("NCT00124774"), previous=other))
    assert "previous.protocolSection.identificationModule.nctId" in found


def test_wrong_task_for_the_type() -> None:
    with pytest.raises(InvalidEvent, match=r"sent to the trial\.changed task"):
        parse_event(new_trial_event(minimal(), "Asthma"), expected_type="trial.changed")


def test_idempotency_key_uses_the_producer_id_or_the_content() -> None:
    record = study("NCT00124774")
    with_id = parse_event(changed_event(record, event_id="crawler-1"))
    assert with_id.idempotency_key == "trial.changed:id:crawler-1"
    a = parse_event(changed_event(record))
    b = parse_event(changed_event(study("NCT00124774")))
    assert a.idempotency_key == b.idempotency_key
    c = parse_event(changed_event(record, occurred_at="2026-11-21T10:00:00Z"))
    assert c.idempotency_key != a.idempotency_key


def test_reasons_never_echo_the_rejected_value() -> None:
    """Reasons are logged and shown to operators; a rejected value may hold an address."""
    event = changed_event(study("NCT00124774"))
    event["trial"]["protocolSection"]["conditionsModule"]["conditions"] = [["someone@example.org"]]
    event["event_id"] = "bad id someone@example.org"
    event["occurred_at"] = "someone@example.org"
    with pytest.raises(InvalidEvent) as info:
        parse_event(event)
    assert len(info.value.errors) >= 3
    assert "@" not in str(info.value)


def test_every_unacceptable_character_is_found_wherever_it_is() -> None:
    # parse_event only walks the strings when its quick look at the JSON text finds a sign of trouble:
    # every character text.problem refuses must show such a sign, in a value or in a key, and a clean
    # text (including a literal backslash before "u00", "b" or "f") must still be accepted.
    from alerts import text

    base = study("NCT00124774")
    refused = [chr(c) for c in [*range(0x00, 0x20), 0x7F, 0xD800, 0xDBFF, 0xDC00, 0xDFFF] if text.problem(chr(c))]
    assert len(refused) == 32 - 3 + 1 + 4  # C0 but tab, LF, CR; DEL; surrogates
    for ch in refused:
        for where in ("value", "key"):
            event = changed_event(copy.deepcopy(base))
            module = event["trial"]["protocolSection"]["identificationModule"]
            if where == "value":
                module["briefTitle"] = f"a{ch}b"
            else:
                module[f"odd{ch}key"] = "x"
            with pytest.raises(InvalidEvent):
                parse_event(event)
    for fine in ("tab\there", "a\\u00b", "c:\\bin\\files", "\u0085 \u2028 é"):
        event = changed_event(copy.deepcopy(base))
        event["trial"]["protocolSection"]["identificationModule"]["briefTitle"] = fine
        assert parse_event(event).trial["protocolSection"]["identificationModule"]["briefTitle"] == fine
