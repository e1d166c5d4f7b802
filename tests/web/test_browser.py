"""The whole subscriber journey in a real browser (Debian's Chromium through Playwright) against the real app
served by uvicorn: sign up through the form, confirm from the email in the outbox, receive an alert,
unsubscribe from its link, manage and delete. Screenshots of every page (desktop and a narrow phone) go to
test-artifacts/screenshots/.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from alerts import places
from alerts.models import SubscriptionStatus
from alerts.pipeline import ingest
from alerts.runtime import Runtime
from alerts.transports.file import FileTransport
from alerts.web import create_app
from tests.conftest import InlineEnqueue, study
from tests.factories import changed_event, open_recruitment
from tests.web.journey import link_in, list_unsubscribe_path, subscriptions_of

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TRIAL = "NCT00124774"
CONDITION = "Herniated Disc"
# How the service names it: the MeSH concept the vocabulary resolves the trial page's words to.
SHOWN = "Intervertebral Disc Displacement"
DESKTOP = ViewportSize(width=1280, height=860)
PHONE = ViewportSize(width=360, height=740)


@dataclass
class Site:
    url: str
    runtime: Runtime
    outbox: Path
    enqueue: InlineEnqueue

    def emails(self) -> list[EmailMessage]:
        parser = BytesParser(policy=policy.default)
        files = sorted(self.outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
        return [parser.parsebytes(p.read_bytes()) for p in files]  # type: ignore[misc]

    def wait_for_email(self, count: int, timeout_s: float = 10.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout_s
        while len(self.emails()) < count:
            assert time.monotonic() < deadline, f"expected {count} emails, have {len(self.emails())}"
            time.sleep(0.05)
        return self.emails()


@pytest.fixture
def site(runtime: Runtime, tmp_path: Path) -> Iterator[Site]:
    """The real app on uvicorn (127.0.0.1, ephemeral port), emails written as .eml files."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    outbox = tmp_path / "outbox"
    runtime.settings = runtime.settings.model_copy(
        update={"base_url": url, "email_backend": "file", "outbox_dir": outbox}
    )
    runtime.__dict__.pop("links", None)  # built from base_url
    runtime.transport = FileTransport(outbox)
    enqueue = InlineEnqueue(runtime)
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime, enqueue=enqueue), log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield Site(url, runtime, outbox, enqueue)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed: run scripts/ensure-chromium.sh")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


class Shots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        self.count = 0

    def take(self, page: Page, name: str) -> None:
        self.count += 1
        page.screenshot(path=str(self.folder / f"{self.count:02d}-{name}.png"), full_page=True)


def test_subscriber_journey(site: Site, browser: Browser, request: pytest.FixtureRequest) -> None:
    db = request.node.callspec.params.get("db_url", "db")
    shots = Shots(SCREENSHOTS / str(db))
    print(f"\nscreenshots: {shots.folder}")
    runtime = site.runtime
    # The service has seen the study before (so the pages can show its title), with nobody following it.
    record = study(TRIAL)
    ingest(runtime, changed_event(record), site.enqueue, source="test")

    desktop = browser.new_context(viewport=DESKTOP)
    page = desktop.new_page()

    # 1. The trial page's "Get notified about this study" link.
    page.goto(f"{site.url}/subscribe?trial={TRIAL}&condition={CONDITION.replace(' ', '+')}")
    expect(page.get_by_role("heading", name="Get email alerts")).to_be_visible()
    expect(page.get_by_label("Changes to this study")).to_be_checked()
    expect(page.get_by_label(f"New studies for {SHOWN}")).not_to_be_checked()
    shots.take(page, "subscribe-desktop")

    # A mistake first: the form says what is wrong, next to the field.
    page.get_by_label("Email address").fill("pat@@example")
    page.get_by_role("button", name="Get alerts").click()
    expect(page.get_by_role("alert")).to_contain_text("Enter a valid email address")
    expect(page.get_by_label("Email address")).to_have_attribute("aria-invalid", "true")
    shots.take(page, "subscribe-error-desktop")

    page.get_by_label("Email address").fill("Pat.Reader@example.org")
    page.get_by_label(f"New studies for {SHOWN}").check()
    page.get_by_role("button", name="Get alerts").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    assert "example.org" not in page.url and "Pat" not in page.content()
    shots.take(page, "check-your-inbox-desktop")

    # 2. One confirmation email for both alerts chosen; its one link confirms both.
    [email] = site.wait_for_email(1)
    assert str(email["To"]) == "pat.reader@example.org"
    assert str(email["Subject"]) == "Please confirm your 2 alerts"
    confirm_url = site.url + link_in(email, "confirm")
    subs = subscriptions_of(runtime, "pat.reader@example.org")
    assert [s.status for s in subs] == ["pending", "pending"]
    page.goto(confirm_url)
    expect(page.get_by_role("heading", name="Confirm your alerts")).to_be_visible()
    expect(page.get_by_text(f"New studies for {SHOWN}")).to_be_visible()
    assert [s.status for s in subscriptions_of(runtime, "pat.reader@example.org")] == ["pending", "pending"]
    shots.take(page, "confirm-desktop")
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("heading", name="You're subscribed")).to_be_visible()
    shots.take(page, "confirmed-desktop")
    assert [s.status for s in subscriptions_of(runtime, "pat.reader@example.org")] == ["active", "active"]

    # 3. The study changes: an alert arrives.
    before = len(site.emails())
    ingest(runtime, changed_event(open_recruitment(record)), site.enqueue, source="test")
    alert = site.wait_for_email(before + 1)[-1]
    assert alert["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # 4. Manage page from the alert's footer.
    page.goto(site.url + link_in(alert, "manage"))
    expect(page.get_by_role("heading", name="Your alerts")).to_be_visible()
    expect(page.get_by_text(f"Changes to study {TRIAL}", exact=True)).to_be_visible()
    shots.take(page, "manage-desktop")

    # 5. Unsubscribe through the List-Unsubscribe link, opened in the browser.
    unsubscribe_url = site.url + list_unsubscribe_path(alert, site.url)
    page.goto(unsubscribe_url)
    expect(page.get_by_role("heading", name="Unsubscribe?")).to_be_visible()
    assert subscriptions_of(runtime, "pat.reader@example.org")[0].status == SubscriptionStatus.ACTIVE
    shots.take(page, "unsubscribe-desktop")
    page.get_by_role("button", name="Unsubscribe from this alert").click()
    expect(page.get_by_role("heading", name="You're unsubscribed")).to_be_visible()
    shots.take(page, "unsubscribed-desktop")
    trial_sub = next(s for s in subscriptions_of(runtime, "pat.reader@example.org") if s.target == TRIAL)
    assert trial_sub.status == SubscriptionStatus.UNSUBSCRIBED

    # 6. A broken link is a clear page, not an error trace.
    page.goto(unsubscribe_url[:-6])
    expect(page.get_by_role("heading", name="This link doesn't work")).to_be_visible()
    shots.take(page, "bad-link-desktop")
    desktop.close()

    # 7. On a phone, keyboard only: someone else signs up; then Pat manages and deletes everything.
    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page = phone.new_page()
    page.goto(f"{site.url}/subscribe?trial={TRIAL}&condition={CONDITION.replace(' ', '+')}")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "no sideways scrolling"
    shots.take(page, "subscribe-phone")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "email"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid", "visible focus"
    page.keyboard.type("sam@example.org")
    page.keyboard.press("Tab")  # the study, already ticked
    page.keyboard.press("Tab")  # the condition
    page.keyboard.press("Space")
    # "Studies you could join": every field optional, reached in order, each with why it is asked.
    for field in ("city", "distance", "recruiting_sites_only", "age", "sex"):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == field
    # How often (one stop for the radio group), then the digest time: hour, weekday, time zone.
    for expected in ("frequency-immediately", "digest_hour", "digest_weekday", "time_zone"):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == expected
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Get alerts"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    shots.take(page, "check-your-inbox-phone")

    manage_url = site.url + link_in(alert, "manage")
    page.goto(manage_url)
    expect(page.get_by_text(f"New studies for {SHOWN}", exact=True)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shots.take(page, "manage-phone")
    page.get_by_role("button", name="Delete all my data").click()  # box not ticked: the browser stops it
    assert subscriptions_of(runtime, "pat.reader@example.org")
    page.get_by_label("I understand: delete my address and all my alerts.").check()
    page.get_by_role("button", name="Delete all my data").click()
    expect(page.get_by_role("heading", name="Your data has been deleted")).to_be_visible()
    shots.take(page, "erased-phone")
    assert subscriptions_of(runtime, "pat.reader@example.org") == []
    page.goto(manage_url)
    expect(page.get_by_role("heading", name="This link is no longer valid")).to_be_visible()
    shots.take(page, "gone-phone")
    phone.close()
    assert len(list(shots.folder.glob("*.png"))) == shots.count


def test_city_autocomplete_picks_a_gazetteer_city(site: Site, browser: Browser, request: pytest.FixtureRequest) -> None:
    """The one script: typing a city fetches suggestions (POST) and picking one fills the hidden city id."""
    db = request.node.callspec.params.get("db_url", "db")
    folder = SCREENSHOTS / f"{db}-places"
    folder.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(f"{site.url}/subscribe?condition=Asthma")
    page.get_by_label("Your city or nearest town").fill("Arnh")
    # (The first search may wait for the gazetteer's index on a busy machine.)
    expect(page.locator("#city-options option").first).to_have_attribute(
        "value", "Arnhem, The Netherlands", timeout=30_000
    )
    page.get_by_label("Your city or nearest town").fill("Arnhem, The Netherlands")
    expect(page.locator("#city_id")).to_have_value(str(places.gazetteer().search("Arnhem")[0].id), timeout=30_000)
    page.get_by_label("How far could you travel?").select_option(index=2)  # 50 (km or miles by locale)
    page.get_by_label("Your age").fill("54")
    page.screenshot(path=str(folder / "subscribe-with-a-place.png"), full_page=True)
    # Nothing blocked by the Content-Security-Policy (the browser's own favicon request may 404).
    assert [e for e in errors if "Refused" in e or "Content Security Policy" in e] == []


def test_digest_journey_frequency_and_time_zone(site: Site, browser: Browser, request: pytest.FixtureRequest) -> None:
    """Sign up for a weekly digest (time zone filled from the browser), get it at the local hour, change
    frequency and time zone on the manage page, stop it with the digest's own link."""
    from zoneinfo import ZoneInfo

    from alerts.digests.windows import WEEKLY, next_close
    from alerts.models import utcnow
    from alerts.pipeline import digest_tick

    db = request.node.callspec.params.get("db_url", "db")
    shots = Shots(SCREENSHOTS / f"digest-{db}")
    runtime = site.runtime
    record = study(TRIAL)
    ingest(runtime, changed_event(record), site.enqueue, source="test")

    # A browser in India may report the zone's old name (Asia/Calcutta), which the menu does not list: the
    # form offers it anyway, chosen, rather than leaving UTC.
    india = browser.new_context(viewport=DESKTOP, timezone_id="Asia/Calcutta")
    india_page = india.new_page()
    india_page.goto(f"{site.url}/subscribe?trial={TRIAL}")
    reported = india_page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
    assert reported in ("Asia/Calcutta", "Asia/Kolkata")
    expect(india_page.get_by_label("Your time zone")).to_have_value(reported)
    india.close()

    # The browser says it is in Shanghai: the form's time zone is filled from it.
    context = browser.new_context(viewport=DESKTOP, timezone_id="Asia/Shanghai")
    page = context.new_page()
    page.goto(f"{site.url}/subscribe?trial={TRIAL}")
    expect(page.get_by_label("Your time zone")).to_have_value("Asia/Shanghai")
    expect(page.get_by_label("As it happens")).to_be_checked()
    page.get_by_label("Email address").fill("lee@example.org")
    page.get_by_label("Once a week").check()
    page.get_by_label("Time for daily and weekly emails").select_option("7")
    page.get_by_label("Day for weekly emails").select_option("4")  # Friday
    shots.take(page, "subscribe-weekly-desktop")
    page.get_by_role("button", name="Get alerts").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    [confirmation] = site.wait_for_email(1)
    page.goto(site.url + link_in(confirmation, "confirm"))
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("heading", name="You're subscribed")).to_be_visible()
    [subscription] = subscriptions_of(runtime, "lee@example.org")
    assert (subscription.frequency, subscription.status) == ("weekly", SubscriptionStatus.ACTIVE)

    # The study changes: nothing at once; the digest comes on Friday at 07:00 in Shanghai.
    ingest(runtime, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"), site.enqueue, "t")
    assert len(site.emails()) == 1
    friday = next_close(utcnow(), ZoneInfo("Asia/Shanghai"), 7, 4, WEEKLY)
    digest_tick(runtime, site.enqueue.send_digests, now=friday - timedelta(hours=1))
    assert len(site.emails()) == 1
    digest_tick(runtime, site.enqueue.send_digests, now=friday)
    digest = site.wait_for_email(2)[-1]
    assert str(digest["Subject"]) == "Your weekly digest: 1 update to studies you follow"

    # Manage page from the digest's footer: daily instead, and another time zone.
    page.goto(site.url + link_in(digest, "manage"))
    expect(page.get_by_role("heading", name="Your alerts")).to_be_visible()
    page.get_by_label(f"How often for changes to study {TRIAL}").select_option("daily")
    page.get_by_role("button", name=f"Save how often for changes to study {TRIAL}").click()
    expect(page.get_by_role("status")).to_contain_text("once a day")
    page.get_by_label("Your time zone").select_option("America/St_Johns")
    page.get_by_role("button", name="Save the time").click()
    expect(page.get_by_text("07:00, America/St_Johns")).to_be_visible()
    shots.take(page, "manage-digest-desktop")
    [subscription] = subscriptions_of(runtime, "lee@example.org")
    assert subscription.frequency == "daily"

    # The digest's own unsubscribe link (List-Unsubscribe), opened in the browser.
    header = "".join(str(digest["List-Unsubscribe"]).split()).strip("<>")
    # First the whole digest's page (where a digest too long for one email links; same token).
    page.goto(header.replace("/unsubscribe/digest/", "/digest/"))
    expect(page.locator(".digest")).to_contain_text(TRIAL)
    expect(page.get_by_role("link", name="Stop following this study")).to_be_visible()
    shots.take(page, "digest-page-desktop")
    page.goto(header)
    expect(page.get_by_role("heading", name="Stop the alerts in this digest?")).to_be_visible()
    shots.take(page, "digest-unsubscribe-desktop")
    page.get_by_role("button", name="Stop this alert").click()
    expect(page.get_by_role("heading", name="You're unsubscribed")).to_be_visible()
    shots.take(page, "digest-unsubscribed-desktop")
    assert [s.status for s in subscriptions_of(runtime, "lee@example.org")] == [SubscriptionStatus.UNSUBSCRIBED]
    context.close()
