"""The operator page in a real browser (Debian's Chromium): every table fits its card, on a desktop and a
phone, and the chart and the table beside it count the same thing."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy import update

from alerts.db import transaction
from alerts.models import Delivery, utcnow
from alerts.pipeline import ingest
from alerts.runtime import Runtime
from tests.conftest import InlineEnqueue, study
from tests.factories import follow, new_trial_event
from tests.web.test_browser import ARGS, CHROMIUM, DESKTOP, PHONE
from tests.web.test_ops import basic, ops_client  # noqa: F401 - the fixture

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed: run scripts/ensure-chromium.sh")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


def test_every_ops_card_fits_and_chart_and_table_agree(
    ops_client: TestClient,  # noqa: F811
    runtime: Runtime,
    inline: InlineEnqueue,
    browser: Browser,
) -> None:
    for n in range(4):
        follow(runtime, f"p{n}@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "t")
    ingest(runtime, {"type": "trial.changed"}, inline, "t")
    reason = (
        "SendGrid 403: The from address does not match a verified Sender Identity "
        "(see https://sendgrid.com/docs/for-developers/sending-email/sender-identity/)"
    )
    with transaction(runtime.engine) as session:
        failed = {"status": "failed", "error": reason, "error_code": 403, "sent_at": None, "updated_at": utcnow()}
        session.execute(update(Delivery).where(Delivery.id == 1).values(**failed))
    html = ops_client.get("/ops", headers=basic("ops-token-for-tests")).text

    legend = dict(re.findall(r">(sent|failed): (\d+)</text>", html))
    assert legend == {"sent": "3", "failed": "1"}
    assert re.search(r"sent in the last 24 h</th><td class=\"n\">3<", html)
    assert re.search(r"failed in the last 24 h \(failed now\)</th><td class=\"n\">1<", html)

    for viewport in (DESKTOP, PHONE):
        page = browser.new_page(viewport=viewport)
        page.set_content(html)
        overflowing = page.evaluate(
            """() => [...document.querySelectorAll('.card')]
                 .filter(card => card.scrollWidth > card.clientWidth + 1)
                 .map(card => card.querySelector('h2').textContent)"""
        )
        assert overflowing == [], f"at {viewport['width']} px wide, too wide for their card: {overflowing}"
        page.close()
