"""The registry stand-in answers like ClinicalTrials.gov: every answer checked against the official OpenAPI file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from alerts.ctgov.client import WATCH_FIELDS, advanced_filter
from alerts.ctgov.standin import RegistryStandIn, last_update
from tests.conftest import all_studies

OPENAPI = Path(__file__).parents[1] / "fixtures" / "ctgov" / "api" / "ctg-oas-v2.yaml"


@cache
def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    return spec


def schema_errors(name: str, instance: Any) -> list[str]:
    """Errors of ``instance`` against ``components.schemas.<name>`` of the registry's OpenAPI file."""
    validator = OAS30Validator({**_spec(), "$ref": f"#/components/schemas/{name}"})
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


def response_schema(path: str, status: int) -> tuple[str, str]:
    """(content type, schema name) the OpenAPI file declares for ``path`` answering ``status``."""
    content = _spec()["paths"][path]["get"]["responses"][str(status)]["content"]
    kind = "application/json" if "application/json" in content else next(iter(content))
    return kind, content[kind]["schema"]["$ref"].rsplit("/", 1)[1]


def check(response: httpx.Response, path: str) -> Any:
    kind, name = response_schema(path, response.status_code)
    assert response.headers["content-type"].startswith(kind)
    if kind != "application/json":
        return response.text
    body = response.json()
    assert schema_errors(name, body) == []
    return body


@pytest.fixture
def registry() -> Iterator[RegistryStandIn]:
    with RegistryStandIn(all_studies()) as standin:
        yield standin


def test_the_fixture_records_are_valid_registry_records() -> None:
    for record in all_studies():
        assert schema_errors("Study", record) == []


def test_version(registry: RegistryStandIn) -> None:
    body = check(httpx.get(f"{registry.url}/version"), "/version")
    assert body["dataTimestamp"] == registry.data_timestamp


def test_pages_walk_every_record_once_with_the_fields_asked(registry: RegistryStandIn) -> None:
    params = {"format": "json", "pageSize": "50", "fields": "|".join(WATCH_FIELDS), "countTotal": "true"}
    seen: list[str] = []
    token = None
    while True:
        response = httpx.get(f"{registry.url}/studies", params=params | ({"pageToken": token} if token else {}))
        body = check(response, "/studies")
        if token is None:
            assert body["totalCount"] == 129
        else:
            assert "totalCount" not in body
        for study in body["studies"]:
            assert set(study) <= {"protocolSection", "derivedSection", "hasResults"}
            assert "outcomesModule" not in study["protocolSection"]
            assert set(study.get("derivedSection", {})) <= {"conditionBrowseModule"}
            seen.append(study["protocolSection"]["identificationModule"]["nctId"])
        token = body.get("nextPageToken")
        if not token:
            break
    assert len(seen) == len(set(seen)) == 129


def test_filter_on_last_update_and_sort(registry: RegistryStandIn) -> None:
    since = "2024-06-01"
    params = {"filter.advanced": advanced_filter(date.fromisoformat(since)), "pageSize": "1000"}
    body = check(httpx.get(f"{registry.url}/studies", params=params), "/studies")
    expected = {r["protocolSection"]["identificationModule"]["nctId"] for r in all_studies() if last_update(r) >= since}  # type: ignore[operator]
    assert {s["protocolSection"]["identificationModule"]["nctId"] for s in body["studies"]} == expected
    assert 0 < len(expected) < 129
    body = check(
        httpx.get(f"{registry.url}/studies", params={"sort": "LastUpdatePostDate", "pageSize": "5"}), "/studies"
    )
    dates = [last_update(s) for s in body["studies"]]
    assert dates == sorted(dates, reverse=True)  # type: ignore[type-var]


def test_advancing_the_day(registry: RegistryStandIn) -> None:
    record = all_studies()[0]
    record["protocolSection"]["statusModule"]["overallStatus"] = "SUSPENDED"
    day = registry.advance_day([record])
    assert registry.data_timestamp.startswith(day.isoformat())
    params = {"filter.advanced": f"AREA[LastUpdatePostDate]RANGE[{day.isoformat()},MAX]"}
    body = check(httpx.get(f"{registry.url}/studies", params=params), "/studies")
    assert [s["protocolSection"]["statusModule"]["overallStatus"] for s in body["studies"]] == ["SUSPENDED"]


def test_one_study_and_errors(registry: RegistryStandIn) -> None:
    body = check(
        httpx.get(f"{registry.url}/studies/NCT04388332", params={"fields": "ConditionsModule"}), "/studies/{nctId}"
    )
    assert body == {
        "protocolSection": {
            "conditionsModule": all_studies_by_id()["NCT04388332"]["protocolSection"]["conditionsModule"]
        }
    }
    assert check(httpx.get(f"{registry.url}/studies/NCT99999999"), "/studies/{nctId}").startswith("Study")
    assert httpx.get(f"{registry.url}/studies/NCT9").status_code == 400
    bad = httpx.get(f"{registry.url}/studies", params={"fields": "NoSuchPiece"})
    assert check(bad, "/studies") and bad.status_code == 400
    other = httpx.get(f"{registry.url}/studies", params={"pageSize": "2"}).json()["nextPageToken"]
    assert (
        httpx.get(f"{registry.url}/studies", params={"pageToken": other, "sort": "LastUpdatePostDate"}).status_code
        == 400
    )


def all_studies_by_id() -> dict[str, dict[str, Any]]:
    return {r["protocolSection"]["identificationModule"]["nctId"]: r for r in all_studies()}


def test_faults(registry: RegistryStandIn) -> None:
    registry.timeout_fault_s = 0.5
    registry.inject("429", retry_after="7")
    registry.inject("500")
    registry.inject("truncated")
    registry.inject("shape")
    registry.inject("reset")
    registry.inject("timeout")
    url = f"{registry.url}/studies"
    limited = httpx.get(url)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert httpx.get(url).status_code == 500
    with pytest.raises(json.JSONDecodeError):
        json.loads(httpx.get(url).text)
    shape = httpx.get(url).json()
    assert schema_errors("PagedStudies", shape) != []  # the point of the fault: not a page
    with pytest.raises(httpx.TransportError):
        httpx.get(url)
    with pytest.raises(httpx.TimeoutException):
        httpx.get(url, timeout=0.2)
    assert httpx.get(url).status_code == 200  # faults are used up
    assert httpx.get(f"{registry.url}/version").status_code == 200
