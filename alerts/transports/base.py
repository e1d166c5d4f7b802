"""The transport interface: send one batch (shared content, many recipients), report per recipient."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from alerts.rendering import Content

# SendGrid's personalizations limit; every transport takes batches of at most this many recipients.
MAX_BATCH = 1000


@dataclass(frozen=True)
class Recipient:
    delivery_id: int
    email: str
    # Placeholder name -> value, e.g. {"unsubscribe_url": "https://.../unsubscribe/<token>"}.
    values: Mapping[str, str]
    message_id: str
    # This recipient's subject when it differs from the batch's (a change alert that leads with a site
    # near them, alerts.contents); None: the batch content's subject.
    subject: str | None = None
    # Per-recipient blocks of the message that are not links (a digest's own entries, alerts.digests.send):
    # "subject", "html" and "text" fill PART_TAGS in that one part of the batch's content, as they are (the
    # HTML is escaped by its renderer). None for emails whose content is entirely shared.
    parts: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Batch:
    content: Content
    recipients: Sequence[Recipient]
    from_email: str
    from_name: str
    # Header templates; placeholders like %%unsubscribe_url%% are filled per recipient.
    headers: Mapping[str, str] = field(default_factory=dict)
    category: str = "alert"


class Outcome(enum.StrEnum):
    SENT = "sent"  # accepted by the next hop; never send again
    FAILED = "failed"  # permanent: do not retry
    RETRY = "retry"  # transient: try again later


@dataclass(frozen=True)
class Result:
    delivery_id: int
    outcome: Outcome
    provider_message_id: str | None = None
    error: str | None = None
    # For RETRY: how long the provider asked us to wait (Retry-After), if it said.
    retry_after_s: float | None = None
    # For FAILED: the provider's status (HTTP status for an API, SMTP reply code for SMTP), if it gave one.
    error_code: int | None = None
    # For RETRY: the provider may have accepted it already (timeout after sending); counted on the delivery.
    ambiguous: bool = False


# A transport may also keep ``answers``, a collections.Counter of what the provider answered to each request
# it made: the status code as text ("202", "429", "250"), or one of these two. The sender records what changed
# during each batch (alerts.counters), so operators see real counts of provider answers.
TIMEOUT = "timeout"  # the request went out and no answer came in time: acceptance unknown
UNREACHABLE = "unreachable"  # the request could not be made (connection refused, DNS...)


class Transport(Protocol):
    name: str

    def send(self, batch: Batch) -> list[Result]:
        """Send every recipient of ``batch`` and say what happened to each one."""
        ...


# Where each per-recipient part goes: a tag that appears only in its own part of the shared content.
PART_TAGS = {"subject": "%%part_subject%%", "html": "%%part_html%%", "text": "%%part_text%%"}


def fill(template: str, values: Mapping[str, str]) -> str:
    for name, value in values.items():
        template = template.replace(f"%%{name}%%", value)
    return template
