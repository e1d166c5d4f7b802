"""The sign-up form inside another site: every answer it leads to may be framed by the configured origins
(ALERTS_EMBED_ORIGINS), and no other page may be framed at all."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from alerts.config import ConfigError, load_settings
from alerts.runtime import Runtime
from tests.conftest import SECRET, InlineEnqueue
from tests.factories import follow
from tests.web.journey import client_for, limited_app, manage_token_of, teach

TRIAL = "NCT06740149"
ORIGINS = ("https://trials.example.org", "https://www.example.com:8443")
HTML = {"Accept": "text/html"}


@pytest.fixture
def embedded(runtime: Runtime, inline: InlineEnqueue) -> Iterator[TestClient]:
    app = limited_app(runtime, inline, embed_origins=ORIGINS, signup_per_ip="2/minute")  # type: ignore[arg-type]
    teach(runtime)
    yield client_for(app)
    app.state.limiter.reset()


def framed_by_the_trial_site(response: object) -> bool:
    headers = response.headers  # type: ignore[attr-defined]
    csp = headers["content-security-policy"]
    return (
        "frame-ancestors https://trials.example.org https://www.example.com:8443" in csp
        and "x-frame-options" not in headers
    )


def never_framed(response: object) -> bool:
    headers = response.headers  # type: ignore[attr-defined]
    return "frame-ancestors 'none'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"


def test_every_answer_of_the_sign_up_form_may_be_framed_by_the_configured_sites(
    embedded: TestClient, runtime: Runtime
) -> None:
    form = embedded.get("/subscribe", params={"trial": TRIAL, "condition": "Liver Failure"})
    assert form.status_code == 200 and framed_by_the_trial_site(form)
    bad_link = embedded.get("/subscribe", params={"trial": "NCT1"})
    assert bad_link.status_code == 400 and framed_by_the_trial_site(bad_link)
    invalid = embedded.post("/subscribe", data={"email": "nope", "trial": TRIAL})
    assert invalid.status_code == 422 and framed_by_the_trial_site(invalid)
    sent = embedded.post("/subscribe", data={"email": "a@example.org", "trial": TRIAL})
    assert sent.status_code == 200 and str(sent.url).endswith("/subscribe/sent") and framed_by_the_trial_site(sent)
    embedded.post("/subscribe", data={"email": "b@example.org", "trial": TRIAL})
    # Over the per-IP limit inside the frame: a page that says so, not the browser's "refused to connect".
    limited = embedded.post(
        "/subscribe",
        data={
            "email": "c@example.org",
            "offered_trial": TRIAL,
            "offered_condition": "Liver Failure",
            "trial": TRIAL,
        },
        headers=HTML,
    )
    assert limited.status_code == 429 and framed_by_the_trial_site(limited)
    assert "Please wait a little" in limited.text
    # ... with a way back to the same form.
    assert 'href="/subscribe?trial=NCT06740149&amp;condition=Liver+Failure"' in limited.text
    assert "Back to the form" in limited.text
    missing = embedded.get("/subscribe/nothing-here", headers=HTML)
    assert missing.status_code == 404 and framed_by_the_trial_site(missing)
    too_big = embedded.post("/subscribe", content=b"email=" + b"a" * 70_000, headers=HTML)
    assert too_big.status_code == 413 and framed_by_the_trial_site(too_big)


def test_every_other_page_stays_unframeable(embedded: TestClient, runtime: Runtime) -> None:
    follow(runtime, "a@example.org", trial=TRIAL)
    token = manage_token_of(runtime, "a@example.org")
    for path in (f"/manage/{token}", "/confirm/not-a-token", "/unsubscribe/not-a-token", "/nowhere"):
        assert never_framed(embedded.get(path, headers=HTML)), path


def test_without_origins_nothing_may_be_framed(client: TestClient) -> None:
    assert never_framed(client.get("/subscribe"))
    assert never_framed(client.get("/subscribe/sent"))


@pytest.mark.parametrize(
    "value", ["https://a.example.org; script-src *", "javascript:alert(1)", "https://a.example.org/path", "'self'"]
)
def test_origins_are_validated(value: str) -> None:
    origins = load_settings(secret_key=SECRET, embed_origins="https://a.example.org, https://b.example:8443 ")
    assert origins.embed_origins == ("https://a.example.org", "https://b.example:8443")
    with pytest.raises(ConfigError, match="ALERTS_EMBED_ORIGINS"):
        load_settings(secret_key=SECRET, embed_origins=value)
