"""RFC 5322 messages for transports that speak raw email (file outbox, SMTP)."""

from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, localtime

from alerts.rendering import Content, personalize
from alerts.transports.base import PART_TAGS, Batch, Recipient, fill


def with_parts(content: Content, recipient: Recipient) -> Content:
    """The recipient's own parts (a digest's entries) put into the shared content, as SendGrid would."""
    parts = recipient.parts
    if not parts:
        return content
    subject = content.subject.replace(PART_TAGS["subject"], parts.get("subject", ""))
    if "\r" in subject or "\n" in subject:
        raise ValueError("the subject would contain a line break")
    return Content(
        subject=subject,
        text=content.text.replace(PART_TAGS["text"], parts.get("text", "")),
        html=content.html.replace(PART_TAGS["html"], parts.get("html", "")),
    )


def build_message(batch: Batch, recipient: Recipient) -> EmailMessage:
    content = with_parts(personalize(batch.content, recipient.values), recipient)
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
