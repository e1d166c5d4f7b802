"""The demo: a real Celery worker on the embedded broker, two subscribers, a local ClinicalTrials.gov stand-in
watched by the registry watcher over three of its days, emails on disk.

Everything lives in a fresh workspace (default ``var/demo``) so the demo can run again and again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from alerts import places, preferences, subscriptions
from alerts.config import Settings, environment, load_settings
from alerts.ctgov.standin import RegistryStandIn
from alerts.db import transaction, upgrade
from alerts.logs import configure_logging
from alerts.models import Delivery, DeliveryStatus, Subscription
from alerts.runtime import Runtime, set_runtime
from alerts.tasks.app import create_app, worker_command
from alerts.tasks.enqueue import CeleryEnqueue
from alerts.tokens import Purpose
from alerts.watch.passes import run_pass

TRIAL_FOLLOWER = "maria.example@example.org"
CONDITION_FOLLOWER = "sam.example@example.net"
CONDITION = "Acute-On-Chronic Liver Failure"
REGISTRY_START = "2026-06-26T09:00:00"  # the stand-in's data timestamp before the demo's two days


def demo_records() -> dict[str, Any]:
    text = resources.files("alerts.demo").joinpath("NCT06740149.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def demo_settings(workspace: Path, outbox: Path) -> Settings:
    return load_settings(
        database_url=f"sqlite:///{workspace / 'alerts.db'}",
        broker_url="filesystem://",
        broker_dir=workspace / "broker",
        email_backend="file",
        outbox_dir=outbox,
        log_format="text",
        log_level="WARNING",
        ctgov_rate_per_s=20.0,  # a local stand-in: no need for the registry's one request per second
    )


def _wait(what: str, check: Callable[[], bool], timeout_s: float, say: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)
    say(f"  ok: {what}")


def _sent(runtime: Runtime) -> int:
    with transaction(runtime.engine) as session:
        count = session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.status == DeliveryStatus.SENT.value)
        )
    return int(count or 0)


def _read(path: Path) -> EmailMessage:
    with path.open("rb") as handle:
        message = BytesParser(policy=policy.default).parse(handle)
    assert isinstance(message, EmailMessage)
    return message


def _confirm_token(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    for word in body.get_content().split():
        if "/confirm/" in word:
            return str(word.rsplit("/", 1)[1])
    raise ValueError("no confirmation link in the email")


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = os.environ | environment(settings)
    command = worker_command(standalone=True)
    log = log_path.open("wb")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603


def run_demo(workspace: Path, outbox: Path | None, say: Callable[[str], None] = print) -> list[Path]:
    started = time.monotonic()
    outbox = outbox or workspace / "outbox"
    for path in (workspace, outbox):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    settings = demo_settings(workspace, outbox)
    say(f"workspace: {workspace}  (SQLite database, filesystem broker)")
    configure_logging(settings)
    upgrade(settings.database_url)
    say("  ok: database migrated")
    runtime = Runtime(settings)
    set_runtime(runtime)
    worker = start_worker(settings, workspace / "worker.log")
    say(f"  ok: Celery worker started (pid {worker.pid}, log {workspace / 'worker.log'})")
    enqueue = CeleryEnqueue(create_app(settings))
    try:
        with transaction(runtime.engine) as session:
            first = subscriptions.sign_up(
                session, TRIAL_FOLLOWER, subscriptions.trial_target("NCT06740149"), runtime.signer, runtime.hasher
            )
            second = subscriptions.sign_up(
                session, CONDITION_FOLLOWER, subscriptions.condition_target(CONDITION), runtime.signer, runtime.hasher
            )
            # Sam also said where they live (Foshan, next to Guangzhou), how far they would go, and their age.
            owner = session.get(Subscription, second.subscription_id)
            assert owner is not None
            foshan = places.gazetteer().search("Foshan", limit=1)[0]
            preferences.offer(session, owner.subscriber_id, preferences.parse(city=foshan.id, distance=50, age=52))
        for signup in (first, second):
            enqueue.send_confirmation(signup.subscription_id)
        say("subscribed two people (pending until they confirm):")
        say(f"  {TRIAL_FOLLOWER} -> study NCT06740149;  {CONDITION_FOLLOWER} -> {CONDITION} (near Foshan, 50 km)")
        _wait("2 confirmation emails written", lambda: len(list(outbox.glob("*.eml"))) >= 2, 60, say)
        for path in sorted(outbox.glob("*.eml")):
            token = _confirm_token(_read(path))
            subscription_id = runtime.signer.verify(Purpose.CONFIRM, token, settings.confirm_max_age_s)
            with transaction(runtime.engine) as session:
                subscriptions.confirm(session, subscription_id)
        with transaction(runtime.engine) as session:
            active = session.scalar(
                select(func.count()).select_from(Subscription).where(Subscription.status == "active")
            )
        say(f"  ok: both confirmed through the link in their email ({active} active subscriptions)")

        records = demo_records()
        with RegistryStandIn(data_timestamp=REGISTRY_START) as registry:
            runtime.settings.ctgov_url = registry.url
            say(f"registry stand-in (ClinicalTrials.gov API v2) at {registry.url}")

            def watch(what: str, **options: Any) -> None:
                report = run_pass(runtime, enqueue, **options)
                published = {k.removeprefix("published:"): v for k, v in report.counts.items() if ":" in k}
                say(
                    f"  watch pass ({what}): {report.outcome}, {report.counts.get('read', 0)} record(s) read, "
                    f"published {published or 'nothing'}" + (f" - {report.reason}" if report.reason else "")
                )

            watch("first pass: bootstrap, sends nothing")
            registry.advance_day(new=[records["registered"]])
            say("the registry's next day: NCT06740149 is registered")
            watch("new trials")
            _wait("the new-trial email written by the worker", lambda: _sent(runtime) >= 1, 90, say)
            registry.advance_day([records["updated"]])
            say("the registry's next day: NCT06740149 opens recruitment and adds a site")
            watch("changes")
            _wait("the change email written by the worker", lambda: _sent(runtime) >= 2, 90, say)
            # The same data again, and the last two days read again: nothing is sent twice.
            watch("again, registry unchanged")
            watch("the last two days re-read", since=registry.today - timedelta(days=1))
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
        set_runtime(None)

    files = sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime)
    say("")
    say(f"{len(files)} emails in {outbox}:")
    for path in files:
        message = _read(path)
        say(f"\n--- {path}")
        for header in ("To", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID"):
            if message[header]:
                say(f"{header}: {message[header]}")
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        say("\n".join(text.strip().splitlines()[2:30]))
    say(f"\ndone in {time.monotonic() - started:.1f}s")
    return files
