"""Test data builders: events from real records, active subscribers in bulk."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

from alerts import subscriptions
from alerts.db import transaction
from alerts.digests.preferences import DigestPreferences
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport


def changed_event(trial: dict[str, Any], previous: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "trial.changed", "occurred_at": "2026-11-20T10:00:00Z", "trial": trial}
    if previous is not None:
        event["previous"] = previous
    return event | extra


def new_trial_event(trial: dict[str, Any], condition: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "trial.new_for_condition",
        "condition": condition,
        "occurred_at": "2026-11-20T10:00:00Z",
        "trial": trial,
    } | extra


def follow(
    runtime: Runtime,
    email: str,
    *,
    trial: str | None = None,
    condition: str | None = None,
    frequency: str | None = None,
    preferences: DigestPreferences | None = None,
) -> int:
    """An active subscription (signed up and confirmed); returns its id."""
    target = subscriptions.trial_target(trial) if trial else subscriptions.condition_target(condition or "")
    with transaction(runtime.engine) as session:
        signup = subscriptions.sign_up(
            session, email, target, runtime.signer, runtime.hasher, frequency=frequency, preferences=preferences
        )
        subscriptions.confirm(session, signup.subscription_id)
    return signup.subscription_id


def open_recruitment(record: dict[str, Any]) -> dict[str, Any]:
    edited = copy.deepcopy(record)
    edited["protocolSection"].setdefault("statusModule", {})["overallStatus"] = "RECRUITING"
    return edited


def per_recipient(memory: MemoryTransport) -> Counter[str]:
    """How many emails each address received through the memory transport."""
    return Counter(r.email for b in memory.batches for r in b.recipients)
