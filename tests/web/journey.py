"""Helpers for the subscriber-journey tests: links out of emails, database snapshots, limited clients."""

from __future__ import annotations

import re
import uuid
from email.message import EmailMessage
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from alerts import vocabulary
from alerts.db import transaction
from alerts.demo.run import demo_records
from alerts.models import Base, Subscriber, Subscription, Trial, utcnow
from alerts.runtime import Runtime
from alerts.web import create_app
from tests.conftest import REDIS_URL

BASE = "https://alerts.example.org"
LINK = re.compile(r"https?://[^/\s]+(/(?:confirm|unsubscribe|manage)/[A-Za-z0-9._~-]+)")


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def link_in(message: EmailMessage, kind: str) -> str:
    """The path of the first ``/kind/...`` link in the plain-text part."""
    for path in LINK.findall(text_of(message)):
        if path.startswith(f"/{kind}/"):
            return str(path)
    raise AssertionError(f"no {kind} link in {text_of(message)!r}")


def list_unsubscribe_path(message: EmailMessage, base: str = BASE) -> str:
    header = "".join(str(message["List-Unsubscribe"]).split()).strip("<>")
    assert header.startswith(f"{base}/unsubscribe/"), header
    return header.removeprefix(base)


def snapshot(runtime: Runtime) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for 'nothing changed' assertions."""
    with transaction(runtime.engine) as session:
        return {
            table.name: sorted((tuple(row) for row in session.execute(table.select())), key=repr)
            for table in Base.metadata.sorted_tables
        }


def rows_mentioning(runtime: Runtime, needle: str) -> list[str]:
    """Tables whose rows mention ``needle`` anywhere (any column, compared case-insensitively)."""
    found = []
    for name, rows in snapshot(runtime).items():
        for row in rows:
            if needle.lower() in repr(row).lower():
                found.append(name)
    return found


def subscription(runtime: Runtime, subscription_id: int) -> Subscription:
    with transaction(runtime.engine) as session:
        row = session.get(Subscription, subscription_id)
        assert row is not None
        return row


def subscriptions_of(runtime: Runtime, email: str) -> list[Subscription]:
    with transaction(runtime.engine) as session:
        return list(
            session.scalars(
                select(Subscription)
                .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
                .where(Subscriber.email == email)
                .order_by(Subscription.id)
            )
        )


def manage_token_of(runtime: Runtime, email: str) -> str:
    with transaction(runtime.engine) as session:
        token = session.scalar(select(Subscriber.manage_token).where(Subscriber.email == email))
    assert token
    return str(token)


def add_trial(runtime: Runtime, nct_id: str, title: str) -> None:
    with transaction(runtime.engine) as session:
        session.add(Trial(nct_id=nct_id, title=title, record={}, fingerprint="f" * 64, version_at=utcnow()))


def teach(runtime: Runtime, *records: dict[str, Any]) -> None:
    """The vocabulary as a running service would have learned it from these records (default: the demo
    trial, which teaches "Acute-On-Chronic Liver Failure" and its broader "Liver Failure")."""
    with transaction(runtime.engine) as session:
        for record in records or (demo_records()["registered"],):
            nct_id = record["protocolSection"]["identificationModule"]["nctId"]
            vocabulary.learn(session, nct_id, vocabulary.extract(record))


def limited_app(runtime: Runtime, enqueue: Any, **limits: str) -> FastAPI:
    """An app whose rate limits live in the real Redis, under a prefix of its own."""
    runtime.settings = runtime.settings.model_copy(
        update={"redis_url": REDIS_URL, "ratelimit_prefix": f"test-rl-{uuid.uuid4().hex}"} | limits
    )
    return create_app(runtime, enqueue=enqueue)


def client_for(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)
