"""RFC 5322 messages for transports that speak raw email (file outbox, SMTP)."""

from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, localtime

from alerts.rendering import personalize
from alerts.transports.base import Batch, Recipient, fill


def build_message(batch: Batch, recipient: Recipient) -> EmailMessage:
    content = personalize(batch.content, recipient.values)
    msg = EmailMessage()
    msg["Subject"] = recipient.subject or content.subject
    msg["From"] = Address(display_name=batch.from_name, addr_spec=batch.from_email)
    msg["To"] = recipient.email
    msg["Date"] = format_datetime(localtime())
    msg["Message-ID"] = recipient.message_id
    for name, template in batch.headers.items():
        value = fill(template, recipient.values)
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} would contain a line break")
        msg[name] = value
    # multipart/alternative: text first, HTML last (clients show the last part they understand).
    msg.set_content(content.text)
    msg.add_alternative(content.html, subtype="html")
    return msg
