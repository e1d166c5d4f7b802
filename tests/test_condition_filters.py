"""Filters on condition subscriptions (recruiting only, countries, phases), applied in SQL while matching."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import event, func, select

from alerts import subscriptions
from alerts.db import transaction
from alerts.matching import TrialFacts
from alerts.models import Delivery, Subscription, SubscriptionFilter
from alerts.pipeline import Rejected, ingest
from alerts.runtime import Runtime
from alerts.subscriptions import ConditionFilters, InvalidFilter
from tests.conftest import InlineEnqueue, study
from tests.factories import changed_event, follow, new_trial_event

BASE = "NCT01640457"  # completed; phases 1 and 2; sites in Austria and Germany; filed under disc displacement
# Records that teach the vocabulary that "Herniated Disc" and "Disk, Herniated" mean disc displacement.
TEACHERS = ("NCT00124774", "NCT01339377", BASE)


def edited(status: str | None = None, countries: list[str] | None = None, phases: list[str] | None = None) -> Any:
    record = copy.deepcopy(study(BASE))
    section = record["protocolSection"]
    if status is not None:
        section["statusModule"]["overallStatus"] = status
    if countries is not None:
        section["contactsLocationsModule"]["locations"] = [
            {"facility": f"Spine Centre {c}", "city": "Capital", "country": c} for c in countries
        ]
    if phases is not None:
        section["designModule"]["phases"] = phases
    return record


def follow_with(runtime: Runtime, email: str, condition: str, filters: ConditionFilters) -> int:
    with transaction(runtime.engine) as session:
        target = subscriptions.condition_target(condition)
        signup = subscriptions.sign_up(session, email, target, runtime.signer, runtime.hasher, filters=filters)
        subscriptions.confirm(session, signup.subscription_id)
    return signup.subscription_id


FOLLOWERS: dict[str, tuple[str, ConditionFilters]] = {
    "any": ("Herniated Disc", ConditionFilters()),
    "recruiting": ("Herniated Disc", ConditionFilters(recruiting_only=True)),
    "germany": ("Herniated Disc", ConditionFilters(countries=("Germany",))),
    "france-or-germany": ("Disk, Herniated", ConditionFilters(countries=("FRANCE", "germany"))),
    "france": ("Herniated Disc", ConditionFilters(countries=("France",))),
    "phase2": ("Herniated Disc", ConditionFilters(phases=("Phase 2",))),
    "phase3": ("Herniated Disc", ConditionFilters(phases=("PHASE3",))),
    "no-phase": ("Herniated Disc", ConditionFilters(phases=("Not applicable",))),
    "all-three": ("Herniated Disc", ConditionFilters(recruiting_only=True, countries=("Germany",), phases=("PHASE1",))),
    # Filters apply to subscriptions still on a plain condition key too.
    "text-recruiting": ("Disc Trouble", ConditionFilters(recruiting_only=True)),
}
CASES = [
    (
        "as registered: completed, Austria and Germany, phases 1-2",
        {},
        {"any", "germany", "france-or-germany", "phase2"},
    ),
    (
        "now recruiting",
        {"status": "RECRUITING"},
        {"any", "recruiting", "germany", "france-or-germany", "phase2", "all-three", "text-recruiting"},
    ),
    (
        "not yet recruiting, moved to France, phase 3",
        {"status": "NOT_YET_RECRUITING", "countries": ["France"], "phases": ["PHASE3"]},
        {"any", "recruiting", "france-or-germany", "france", "phase3", "text-recruiting"},
    ),
    (
        "enrolling by invitation is not recruiting",
        {"status": "ENROLLING_BY_INVITATION"},
        {"any", "germany", "france-or-germany", "phase2"},
    ),
    (
        "recruiting, no sites and no phase listed",
        {"status": "RECRUITING", "countries": [], "phases": []},
        {"any", "recruiting", "text-recruiting"},
    ),
    ("device study (phase NA) in Germany", {"phases": ["NA"]}, {"any", "germany", "france-or-germany", "no-phase"}),
]


def teach(runtime: Runtime, inline: InlineEnqueue) -> None:
    for nct_id in TEACHERS:
        ingest(runtime, changed_event(study(nct_id)), inline, "test")


@dataclass
class QueueOnly:
    """Records batches instead of sending: these tests look at matching alone."""

    batches: list[tuple[int, int, int]] = field(default_factory=list)

    def send_batch(self, event_id: int, after_id: int, upto_id: int) -> None:
        self.batches.append((event_id, after_id, upto_id))

    def send_confirmation(self, subscription_id: int, also: Sequence[int] = ()) -> None: ...

    def process_signup(self, request_id: int) -> None: ...

    def trial_event(self, payload: dict[str, Any]) -> None: ...


def matched(runtime: Runtime, ids: dict[int, str]) -> set[str]:
    with transaction(runtime.engine) as session:
        return {ids[s] for s in session.scalars(select(Delivery.subscription_id)) if s is not None}


@pytest.mark.parametrize(("case", "edits", "expected"), CASES, ids=[c[0] for c in CASES])
def test_filters_decide_who_hears_of_a_new_trial(
    runtime: Runtime, inline: InlineEnqueue, case: str, edits: dict[str, Any], expected: set[str]
) -> None:
    teach(runtime, inline)
    ids = {follow_with(runtime, f"{name}@example.org", *spec): name for name, spec in FOLLOWERS.items()}
    outcome = ingest(runtime, new_trial_event(edited(**edits), "Disc trouble"), QueueOnly(), "test")
    assert not isinstance(outcome, Rejected)
    assert matched(runtime, ids) == expected, case


def test_filters_are_evaluated_in_the_one_insert_select(runtime: Runtime, inline: InlineEnqueue) -> None:
    teach(runtime, inline)
    for name, spec in FOLLOWERS.items():
        follow_with(runtime, f"{name}@example.org", *spec)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        outcome = ingest(runtime, new_trial_event(edited(status="RECRUITING"), "Disc trouble"), QueueOnly(), "test")
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)
    assert not isinstance(outcome, Rejected) and outcome.recipients == 7
    touching = [s for s in statements if "subscription_filters" in s or "FROM subscriptions" in s]
    # Besides the INSERT ... SELECT of the emails, two statements read subscriptions and neither filters:
    # the chunk's keyset bound (by the matching index, in order) and the digest-audience probe (by its
    # partial index; nobody here follows with a digest, so no held-items INSERT runs at all).
    bounds = [s for s in touching if s.startswith("SELECT subscriptions.subscriber_id FROM subscriptions")]
    probes = [s for s in touching if s.startswith("SELECT subscriptions_1.subscriber_id FROM subscriptions")]
    inserts = [s for s in touching if s not in bounds + probes]
    assert len(inserts) == 1 and "INSERT INTO deliveries" in inserts[0], touching
    assert all("EXISTS" in s and "subscription_filters" in s for s in inserts)
    assert len(bounds) == 1 and "subscription_filters" not in bounds[0]
    assert len(probes) == 1 and "subscription_filters" not in probes[0]


def test_trial_facts_come_from_the_record() -> None:
    facts = TrialFacts.of(study(BASE))
    assert facts == TrialFacts(
        recruiting=False, countries=("austria", "germany"), phases=("PHASE1", "PHASE2"), min_age=18.0, max_age=60.0
    )
    assert TrialFacts.of(edited(status="Not yet recruiting")).recruiting  # spelled as a label, still recognised
    assert TrialFacts.of({"protocolSection": {"statusModule": "junk"}}) == TrialFacts()


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (ConditionFilters(phases=("Phase 5",)), "not a trial phase"),
        (ConditionFilters(countries=("",)), "not a country"),
        (ConditionFilters(countries=("x" * 101,)), "not a country"),
        (ConditionFilters(countries="France"), "must be a list"),  # type: ignore[arg-type]
        (ConditionFilters(countries=tuple(f"Country {i}" for i in range(51))), "at most 50"),
    ],
)
def test_invalid_filters_are_refused(filters: ConditionFilters, message: str) -> None:
    with pytest.raises(InvalidFilter, match=message):
        filters.rows()


def test_filter_rows_are_normalized() -> None:
    rows = ConditionFilters(countries=("Korea, Republic of", "korea republic of"), phases=("phase 2", "PHASE2")).rows()
    assert rows == [("country", "korea republic of", "Korea, Republic of"), ("phase", "PHASE2", "Phase 2")]


def test_filters_only_for_condition_alerts(runtime: Runtime) -> None:
    with transaction(runtime.engine) as session, pytest.raises(InvalidFilter):
        subscriptions.sign_up(
            session,
            "a@example.org",
            subscriptions.trial_target("NCT04015791"),
            runtime.signer,
            runtime.hasher,
            filters=ConditionFilters(recruiting_only=True),
        )
    trial = follow(runtime, "a@example.org", trial="NCT04015791")
    with transaction(runtime.engine) as session, pytest.raises(InvalidFilter):
        subscriptions.set_filters(session, trial, ConditionFilters(countries=("France",)))


def test_sign_up_sets_filters_until_active_then_only_the_manage_page(runtime: Runtime) -> None:
    target = subscriptions.condition_target("Herniated Disc")
    first, second = ConditionFilters(countries=("France",)), ConditionFilters(recruiting_only=True, phases=("PHASE3",))
    with transaction(runtime.engine) as session:
        signup = subscriptions.sign_up(session, "a@example.org", target, runtime.signer, runtime.hasher, filters=first)
        # Re-submitted while pending: the latest form wins (it is what the confirmation email describes).
        again = subscriptions.sign_up(session, "a@example.org", target, runtime.signer, runtime.hasher, filters=second)
        assert again.subscription_id == signup.subscription_id
        assert subscriptions.filters_of(session, signup.subscription_id) == second
        subscriptions.confirm(session, signup.subscription_id)
        # Active: anyone could type the address into the form, so the form changes nothing.
        subscriptions.sign_up(
            session, "a@example.org", target, runtime.signer, runtime.hasher, filters=ConditionFilters()
        )
        assert subscriptions.filters_of(session, signup.subscription_id) == second
        subscriptions.set_filters(session, signup.subscription_id, first, include_narrower=True)
        assert subscriptions.filters_of(session, signup.subscription_id) == first
        subscription = session.get(Subscription, signup.subscription_id)
        assert subscription is not None and subscription.include_narrower
        assert subscriptions.describe(session, subscription) == (
            "new studies for Herniated Disc (including narrower terms; in France)"
        )


def test_describe_names_every_filter() -> None:
    filters = ConditionFilters(recruiting_only=True, countries=("France", "Germany"), phases=("PHASE2", "PHASE3"))
    assert subscriptions.describe_filters(filters) == " (recruiting only; in France or Germany; phase 2 or phase 3)"
    assert subscriptions.describe_filters(ConditionFilters()) == ""


def test_erasing_a_subscriber_removes_their_filters(runtime: Runtime) -> None:
    subscription = follow_with(runtime, "a@example.org", "Herniated Disc", ConditionFilters(countries=("France",)))
    with transaction(runtime.engine) as session:
        owner = session.get(Subscription, subscription)
        assert owner is not None
        assert subscriptions.erase(session, owner.subscriber_id)
    with transaction(runtime.engine) as session:
        assert session.scalar(select(func.count()).select_from(SubscriptionFilter)) == 0
