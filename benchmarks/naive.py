"""The straightforward design, for comparison: one task per recipient, rendering and premailer per
recipient, one SendGrid request per recipient. Run as its own Celery app:

    celery -A benchmarks.naive worker --queues naive
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Header, Mail
from sqlalchemy import select

from alerts import emails
from alerts.config import get_settings
from alerts.db import make_engine, transaction
from alerts.models import Subscriber, Subscription
from alerts.rendering import Renderer, personalize
from alerts.tasks.app import broker_options

settings = get_settings()
app = Celery("naive", broker=settings.broker_url)
app.conf.update(
    broker_transport_options=broker_options(settings),
    task_default_queue="naive",
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)
_engine = None


def engine() -> Any:
    global _engine
    if _engine is None:
        _engine = make_engine(settings.database_url)
    return _engine


@app.task(name="naive.fanout")
def fanout(event: dict[str, Any], target: str) -> int:
    with transaction(engine()) as session:
        ids = list(
            session.scalars(
                select(Subscription.id).where(Subscription.target == target, Subscription.status == "active")
            )
        )
    for subscription_id in ids:
        send_one.delay(subscription_id, event)
    return len(ids)


@app.task(name="naive.send_one")
def send_one(subscription_id: int, event: dict[str, Any]) -> None:
    with transaction(engine()) as session:
        row = session.execute(
            select(Subscriber.email, Subscriber.manage_token, Subscription.unsubscribe_token)
            .join(Subscription, Subscription.subscriber_id == Subscriber.id)
            .where(Subscription.id == subscription_id)
        ).one()
    site = {"site_name": settings.site_name, "base_url": settings.base_url}
    # Rendered and CSS-inlined for this one recipient.
    content = Renderer().render(emails.NEW_TRIAL, site | emails.new_trial(event["trial"], event["condition"]))
    unsubscribe = f"{settings.base_url}/unsubscribe/{row.unsubscribe_token}"
    content = personalize(
        content, {"unsubscribe_url": unsubscribe, "manage_url": f"{settings.base_url}/manage/{row.manage_token}"}
    )
    mail = Mail(
        from_email=settings.from_email,
        to_emails=row.email,
        subject=content.subject,
        plain_text_content=content.text,
        html_content=content.html,
    )
    mail.add_header(Header("List-Unsubscribe", f"<{unsubscribe}>"))
    mail.add_header(Header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    client = SendGridAPIClient(settings.sendgrid_api_key, host=settings.sendgrid_host)
    client.client.timeout = 10
    client.send(mail)
