from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alerts.db import transaction
from alerts.models import Event, RejectedEvent
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import study
from tests.factories import follow, new_trial_event

AUTH = {"Authorization": "Bearer ingest-token-for-tests"}


def test_requires_the_ingest_token(client: TestClient) -> None:
    event = new_trial_event(study("NCT00124774"), "Herniated Disc")
    assert client.post("/api/events", json=event).status_code == 401
    assert client.post("/api/events", json=event, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/api/events", json=event, headers={"Authorization": "Basic x"}).status_code == 401


def test_valid_event_is_queued_and_processed(client: TestClient, runtime: Runtime, memory: MemoryTransport) -> None:
    follow(runtime, "a@example.org", condition="herniated disc")
    response = client.post("/api/events", json=new_trial_event(study("NCT00124774"), "Herniated Disc"), headers=AUTH)
    assert response.status_code == 202
    assert response.json() == {"status": "queued", "type": "trial.new_for_condition", "nct_id": "NCT00124774"}
    assert [str(m["To"]) for m in memory.messages] == ["a@example.org"]


def test_invalid_event_gets_field_errors_and_is_recorded(client: TestClient, runtime: Runtime) -> None:
    event = new_trial_event(study("NCT00124774"), "")
    response = client.post("/api/events", json=event, headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == "rejected"
    assert body["errors"][0]["field"] == "condition"
    with transaction(runtime.engine) as session:
        assert session.scalar(select(func.count()).select_from(RejectedEvent)) == 1
        assert session.scalar(select(func.count()).select_from(Event)) == 0


def test_non_object_body_is_a_recorded_422_and_bad_json_a_400(client: TestClient, runtime: Runtime) -> None:
    json_headers = AUTH | {"content-type": "application/json"}
    assert client.post("/api/events", content=b"[1,2]", headers=json_headers).status_code == 422
    bad = client.post("/api/events", content=b"{bad json", headers=json_headers)
    assert bad.status_code == 400
    assert bad.json() == {"detail": "the body is not valid JSON"}
    with transaction(runtime.engine) as session:
        assert session.scalar(select(func.count()).select_from(RejectedEvent)) == 1
