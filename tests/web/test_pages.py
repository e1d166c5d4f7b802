"""Page plumbing: the stylesheet, security headers, friendly 404/500 pages, the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_schema_validator import OAS31Validator
from structlog.testing import capture_logs

from alerts.runtime import Runtime
from alerts.web import create_app
from tests.conftest import InlineEnqueue

TRIAL = "NCT06740149"


class ExplodingEnqueue(InlineEnqueue):
    """Fails with the address in the exception message, as a database or broker error might."""

    def process_signup(self, request_id: int) -> None:
        address = "@".join(["secret.person", "example.org"])
        raise RuntimeError(f"broker down while mailing {address}")


@pytest.fixture
def exploding(runtime: Runtime) -> TestClient:
    return TestClient(create_app(runtime, enqueue=ExplodingEnqueue(runtime)), raise_server_exceptions=False)


def test_stylesheet_is_served(client: TestClient) -> None:
    response = client.get("/static/site.css")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert ":focus-visible" in response.text


def test_pages_link_the_stylesheet_and_only_our_own_script(client: TestClient) -> None:
    page = client.get("/subscribe")
    assert '<link rel="stylesheet" href="/static/site.css">' in page.text
    assert '<html lang="en">' in page.text
    assert 'name="viewport"' in page.text
    # Our own scripts, served from here (the city autocomplete, the time zone from the browser); no inline
    # script anywhere.
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert sorted(scripts) == sorted(['<script src="/static/places.js" defer>', '<script src="/static/timezone.js">'])
    assert client.get("/static/places.js").status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "style-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "<script" not in client.get("/manage/invalid-token").text
    assert page.headers["referrer-policy"] == "no-referrer"


def test_unhandled_error_is_a_friendly_page_without_details(exploding: TestClient) -> None:
    with capture_logs() as logs:
        page = exploding.post(
            "/subscribe", data={"email": "secret.person@example.org", "trial": TRIAL}, headers={"Accept": "text/html"}
        )
    assert page.status_code == 500
    assert "Something went wrong on our side" in page.text
    assert "RuntimeError" not in page.text and "Traceback" not in page.text and "secret" not in page.text
    [entry] = [e for e in logs if e["event"] == "web.unhandled_error"]
    assert entry["error"] == "RuntimeError"
    assert entry["route"] == "/subscribe"
    assert "signup.py" in entry["stack"]
    assert "secret.person" not in repr(logs)


def test_unhandled_api_error_is_plain_json(exploding: TestClient) -> None:
    response = exploding.post("/api/subscriptions", json={"email": "secret.person@example.org", "trial": TRIAL})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}


def test_unknown_pages(client: TestClient) -> None:
    page = client.get("/no/such/page", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 404
    assert "Page not found" in page.text
    api = client.get("/api/nothing-here", headers={"Accept": "text/html"})
    assert api.status_code == 404
    assert api.json() == {"detail": "Not Found"}
    wrong_method = client.put(f"/confirm/{'x' * 10}", headers={"Accept": "text/html"})
    assert wrong_method.status_code == 405
    assert "allow" in wrong_method.headers


def test_openapi_document(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    # The HTML pages are not API operations.
    for page in ("/subscribe", "/confirm/{token}", "/unsubscribe/{token}", "/manage/{token}"):
        assert page not in paths
    op = paths["/api/subscriptions"]["post"]
    assert set(op["responses"]) >= {"202", "422", "429"}
    accepted = op["responses"]["202"]["content"]["application/json"]["schema"]
    assert accepted == {"$ref": "#/components/schemas/SignupAccepted"}
    limited = op["responses"]["429"]
    assert limited["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TooManyRequests"}
    assert "Retry-After" in limited["headers"]
    request_schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert request_schema == {"$ref": "#/components/schemas/SignupRequest"}
    schemas = doc["components"]["schemas"]
    digest = {"frequency", "time_zone", "digest_hour", "digest_weekday"}  # alerts.digests.preferences
    assert set(schemas["SignupRequest"]["properties"]) == {"email", "trial", "condition", "preferences"} | digest
    assert schemas["SignupRequest"]["required"] == ["email"]
    for schema in schemas.values():
        OAS31Validator.check_schema(schema)
    # Every $ref resolves.
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(doc)
    for ref in refs:
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_api_answers_match_the_document(client: TestClient) -> None:
    """What the API really answers validates against the schemas it documents."""
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]

    def check(name: str, body: Any) -> None:
        OAS31Validator({"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}}).validate(body)

    check("SignupAccepted", client.post("/api/subscriptions", json={"email": "a@example.org", "trial": TRIAL}).json())
    check("SignupProblem", client.post("/api/subscriptions", json={"email": "x"}).json())
    check("SignupProblem", client.post("/api/subscriptions", json={"email": "a@example.org", "condition": "zz"}).json())
