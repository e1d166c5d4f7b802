"""``GET /api/conditions?q=``: suggestions for the sign-up form."""

from __future__ import annotations

from fastapi.testclient import TestClient

from alerts.pipeline import ingest
from alerts.runtime import Runtime
from tests.conftest import InlineEnqueue, all_studies
from tests.factories import changed_event


def load_all(runtime: Runtime, inline: InlineEnqueue) -> None:
    for record in all_studies():
        ingest(runtime, changed_event(record), inline, "test")


def test_query_is_required_and_at_least_two_characters(client: TestClient) -> None:
    assert client.get("/api/conditions").status_code == 422
    assert client.get("/api/conditions", params={"q": "h"}).status_code == 422
    assert client.get("/api/conditions", params={"q": "x" * 301}).status_code == 422
    response = client.get("/api/conditions", params={"q": "he"})
    assert response.status_code == 200 and response.json() == []  # nothing learned yet


def test_suggestions_from_the_records_seen(client: TestClient, runtime: Runtime, inline: InlineEnqueue) -> None:
    load_all(runtime, inline)
    response = client.get("/api/conditions", params={"q": "Herni"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=300"
    first = response.json()[0]
    assert first == {
        "label": "Herniated Disc",
        "key": "herniated disc",
        "concept": "D007405",
        "term": "Intervertebral Disc Displacement",
        "trials": first["trials"],
        "trials_including_narrower": first["trials"],
        "concepts": ["D007405"],
        "name": "Intervertebral Disc Displacement",
    }
    assert first["trials"] >= 30
    # Word matches too, most trials first, at most ten, one per concept.
    items = client.get("/api/conditions", params={"q": "disorder"}).json()
    assert 1 <= len(items) <= 10
    assert [i["trials"] for i in items] == sorted((i["trials"] for i in items), reverse=True)
    assert len({tuple(i["concepts"]) or i["key"] for i in items}) == len(items)
    # A phrase meaning several sibling concepts is shown with all their plain names.
    both = client.get("/api/conditions", params={"q": "lumbar disc dis"}).json()[0]
    assert both["label"] == "Lumbar Disc Disease" and set(both["concepts"]) == {"D007405", "D055959"}
    assert both["name"] in {
        "Intervertebral Disc Displacement or Intervertebral Disc Degeneration",
        "Intervertebral Disc Degeneration or Intervertebral Disc Displacement",
    }
    assert any(not i["label"].lower().startswith("disorder") for i in items)
    # Punctuation and case do not matter; strange input is just a query that finds nothing.
    assert client.get("/api/conditions", params={"q": "HERNIATED-di"}).json()[0]["concept"] == "D007405"
    assert client.get("/api/conditions", params={"q": "%_'; --"}).json() == []
