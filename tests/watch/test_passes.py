"""Watcher passes against the registry stand-in (real HTTP), on SQLite and PostgreSQL, through the real intake."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from alerts.ctgov.client import RegistryClient
from alerts.ctgov.standin import RegistryStandIn, stamp
from alerts.db import transaction
from alerts.models import (
    ConditionPhrase,
    Delivery,
    Event,
    RejectedEvent,
    Trial,
    WatchState,
)
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from alerts.watch.passes import PassReport
from tests.conftest import InlineEnqueue, all_studies, study
from tests.factories import follow, per_recipient
from tests.watch.conftest import NEW_TRIAL, fast_client

Watch = Callable[..., PassReport]
CHANGES = "NCT04388332"  # recruiting -> active, not recruiting (material)
NOISE = "NCT04325464"  # only NLM's ordering and the verification date move (noise)


def _count(runtime: Runtime, model: Any, *where: Any) -> int:
    with transaction(runtime.engine) as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _followers(runtime: Runtime) -> None:
    follow(runtime, "changes@example.org", trial=CHANGES)
    follow(runtime, "noise@example.org", trial=NOISE)
    # Two of the new trial's conditions, and its MeSH concept learned at bootstrap: one email each.
    follow(runtime, "nash@example.org", condition="NASH")
    follow(runtime, "nash@example.org", condition="Liver Diseases")
    follow(runtime, "fatty@example.org", condition="Fatty Liver")
    follow(runtime, "depression@example.org", condition="Depression")


def _a_day_of_edits(registry: RegistryStandIn) -> date:
    changed = study(CHANGES)
    changed["protocolSection"]["statusModule"]["overallStatus"] = "ACTIVE_NOT_RECRUITING"
    noise = study(NOISE)
    browse = noise["derivedSection"]["conditionBrowseModule"]
    for key in ("meshes", "ancestors", "browseLeaves", "browseBranches"):
        if isinstance(browse.get(key), list):
            browse[key] = list(reversed(browse[key]))
    noise["protocolSection"]["statusModule"]["statusVerifiedDate"] = "2026-11"
    return registry.advance_day([changed, noise], new=[study(NEW_TRIAL)])


def test_bootstrap_stores_and_learns_and_sends_nothing(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport
) -> None:
    _followers(runtime)
    report = watch()
    assert report.outcome == "finished" and report.bootstrap
    assert report.counts == {"read": 128, "stored": 128}
    assert _count(runtime, Trial) == 128 and _count(runtime, ConditionPhrase) > 100
    assert _count(runtime, Event) == 0 and _count(runtime, Delivery) == 0 and memory.batches == []
    assert report.cursor == registry.today.isoformat()
    # The same registry data again: nothing to read.
    again = watch()
    assert again.outcome == "up_to_date" and again.pages == 0
    # An explicit --bootstrap on a populated database still tells nobody, even of the trials it stores anew.
    registry.advance_day([], new=[study(NEW_TRIAL)])
    forced = watch(bootstrap=True)
    assert forced.counts["stored"] + forced.counts["unchanged"] == 129
    assert _count(runtime, Event) == 0 and memory.batches == []


def test_one_day_of_edits_sends_exactly_the_expected_emails(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport
) -> None:
    _followers(runtime)
    watch()
    day = _a_day_of_edits(registry)
    report = watch()
    assert report.outcome == "finished" and not report.bootstrap
    assert report.window == (day - timedelta(days=1)).isoformat()  # the cursor: the registry's last day read
    assert report.counts["read"] == 3
    assert report.counts["published:trial.changed"] == 2 and report.counts["published:trial.new_for_condition"] == 1
    assert report.counts["no_op"] == 1  # the noise
    assert per_recipient(memory) == {"changes@example.org": 1, "nash@example.org": 1, "fatty@example.org": 1}

    # Repeated, overlapping by a day, or forced over the same window: nothing is sent twice.
    assert watch().outcome == "up_to_date"
    overlap = watch(since=day)
    assert overlap.counts == {"read": 3, "unchanged": 3}
    registry.advance_day()
    next_day = watch()
    assert next_day.window == day.isoformat() and next_day.counts.get("unchanged") == 3
    assert per_recipient(memory) == {"changes@example.org": 1, "nash@example.org": 1, "fatty@example.org": 1}


def test_a_trial_first_seen_long_after_it_was_posted_is_a_baseline(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport
) -> None:
    follow(runtime, "nash@example.org", condition="NASH")
    watch()
    registry.advance_day([study(NEW_TRIAL)])  # updated today, but first posted in 2024: not new
    report = watch()
    assert report.counts["stored"] == 1 and "published:trial.new_for_condition" not in report.counts
    assert memory.batches == [] and _count(runtime, Trial, Trial.nct_id == NEW_TRIAL) == 1


def test_bad_records_are_rejected_and_the_pass_goes_on(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport
) -> None:
    follow(runtime, "changes@example.org", trial=CHANGES)
    watch()
    untitled = study("NCT04325464")
    del untitled["protocolSection"]["identificationModule"]["briefTitle"]
    hostile = study("NCT05486611")
    hostile["protocolSection"]["identificationModule"]["nctId"] = "NCT123"
    changed = study(CHANGES)
    changed["protocolSection"]["statusModule"]["overallStatus"] = "SUSPENDED"
    registry.advance_day([untitled, hostile, changed])
    report = watch()
    assert report.outcome == "finished"
    assert report.counts["rejected"] == 2 and report.counts["published:trial.changed"] == 1
    assert per_recipient(memory) == {"changes@example.org": 1}
    with transaction(runtime.engine) as session:
        rejected = session.scalars(select(RejectedEvent).order_by(RejectedEvent.id)).all()
        fields = {e["field"] for r in rejected for e in r.errors}
        assert {r.source for r in rejected} == {"watch"}
    assert "trial.protocolSection.identificationModule.briefTitle" in fields
    assert "trial.protocolSection.identificationModule.nctId" in fields
    # Read again (the day of overlap): the same bad versions are not rejected twice.
    watch(since=registry.today)
    assert _count(runtime, RejectedEvent) == 2


def test_registry_faults_are_retried_and_lose_nothing(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport
) -> None:
    _followers(runtime)
    watch()
    _a_day_of_edits(registry)
    registry.inject("429", path="/version")
    for fault in ("500", "reset", "timeout", "truncated"):
        registry.inject(fault)
    report = watch(client=fast_client(registry, retries=5))
    assert report.outcome == "finished" and report.retries == 5
    assert per_recipient(memory) == {"changes@example.org": 1, "nash@example.org": 1, "fatty@example.org": 1}


def test_a_page_that_stays_broken_ends_the_pass_and_the_next_one_resumes(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport
) -> None:
    _followers(runtime)
    watch()
    _a_day_of_edits(registry)
    small = {"rate_per_s": 1000.0, "retries": 2, "retry_base_s": 0.01}
    runtime.settings.watch_page_size = 2  # two pages: the second one stays broken
    with transaction(runtime.engine) as session:
        cursor_before = session.get(WatchState, "ctgov").cursor  # type: ignore[union-attr]

    class BreakSecondPage(RegistryClient):
        pages = 0

        def studies_page(self, **kwargs: Any) -> Any:
            BreakSecondPage.pages += 1
            if BreakSecondPage.pages == 2:
                registry.inject("truncated", times=3)
            return super().studies_page(**kwargs)

    def breaking(alive: Callable[[], None] | None) -> RegistryClient:
        return BreakSecondPage(registry.url, alive=alive, timeout_s=0.5, **small)

    failed = watch(client=breaking)
    assert failed.outcome == "failed" and "truncated or invalid JSON" in (failed.reason or "")
    assert failed.pages == 1
    with transaction(runtime.engine) as session:
        state = session.get(WatchState, "ctgov")
        assert state is not None and state.cursor == cursor_before and state.pass_page_token
        assert state.last_error and "truncated" in state.last_error
    from alerts.watch.status import collect

    shown = collect(runtime.engine, runtime.settings)
    assert any("truncated" in p for p in shown.problems)
    sent_before = per_recipient(memory)

    resumed = watch()
    assert resumed.outcome == "finished" and resumed.resumed and resumed.pages == 1
    assert resumed.counts["read"] == 3  # the figures of the whole pass
    total = per_recipient(memory)
    assert total == {"changes@example.org": 1, "nash@example.org": 1, "fatty@example.org": 1}
    assert sum(total.values()) >= sum(sent_before.values())
    assert collect(runtime.engine, runtime.settings).problems == []


class Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs except `finally` blocks."""


def test_a_pass_killed_between_pages_resumes_with_the_same_totals(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport, inline: InlineEnqueue
) -> None:
    _followers(runtime)
    watch()
    _a_day_of_edits(registry)
    runtime.settings.watch_page_size = 1

    class DiesOnThirdPage(RegistryClient):
        calls = 0

        def studies_page(self, **kwargs: Any) -> Any:
            DiesOnThirdPage.calls += 1
            if DiesOnThirdPage.calls == 3:
                raise Killed
            return super().studies_page(**kwargs)

    with pytest.raises(Killed):
        watch(client=lambda alive: DiesOnThirdPage(registry.url, alive=alive, rate_per_s=1000.0))
    resumed = watch()
    assert resumed.resumed and resumed.pages == 1 and resumed.counts["read"] == 3
    assert per_recipient(memory) == {"changes@example.org": 1, "nash@example.org": 1, "fatty@example.org": 1}
    assert _count(runtime, Event) == 3


def test_dry_run_stores_and_sends_nothing(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport
) -> None:
    _followers(runtime)
    watch()
    _a_day_of_edits(registry)
    dry = watch(dry_run=True)
    assert dry.outcome == "dry_run" and dry.counts["published:trial.new_for_condition"] == 1
    assert _count(runtime, Event) == 0 and memory.batches == []
    with transaction(runtime.engine) as session:
        state = session.get(WatchState, "ctgov")
        assert state is not None and state.pass_started_at is None and state.data_timestamp != registry.data_timestamp
    assert watch().counts["published:trial.changed"] == 2


def test_a_record_edited_twice_in_a_day_of_overlap_reports_the_second_edit(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport
) -> None:
    follow(runtime, "changes@example.org", trial=CHANGES)
    watch()
    first = study(CHANGES)
    first["protocolSection"]["statusModule"]["overallStatus"] = "SUSPENDED"
    registry.advance_day([first])
    watch()
    second = copy.deepcopy(first)
    second["protocolSection"]["statusModule"]["overallStatus"] = "TERMINATED"
    registry.put([stamp(second, registry.today)])  # the same day, a later refresh of the registry's data
    registry.data_timestamp = registry.data_timestamp.replace("T09", "T21")
    report = watch()
    assert report.counts["published:trial.changed"] == 1
    assert per_recipient(memory) == {"changes@example.org": 2}


def test_a_pass_killed_inside_a_page_resumes_at_the_next_record(
    runtime: Runtime, registry: RegistryStandIn, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """Chunks of one record: killed after a chunk committed, the next pass starts at the record after it."""
    _followers(runtime)
    from alerts.watch.passes import run_pass

    run_pass(runtime, inline, client_factory=fast_client(registry))
    _a_day_of_edits(registry)
    runtime.settings.watch_commit_every = 1

    class DiesAfterFirstCommit(InlineEnqueue):
        def send_batch(self, event_id: int, after_id: int, upto_id: int) -> None:
            raise Killed  # between the chunk's commit and queueing its sending

    with pytest.raises(Killed):
        run_pass(runtime, DiesAfterFirstCommit(runtime), client_factory=fast_client(registry))
    with transaction(runtime.engine) as session:
        state = session.get(WatchState, "ctgov")
        # Records in NCT order: the noise (nothing to queue), then the change, whose queueing was cut.
        assert state is not None and state.pass_page_token is None and state.pass_page_offset == 2
    resumed = run_pass(runtime, inline, client_factory=fast_client(registry))
    assert resumed.resumed and resumed.counts["read"] == 3
    assert _count(runtime, Event) == 3
    # The killed chunk's deliveries exist and wait for maintenance to queue them (stale queued work).
    assert _count(runtime, Delivery) == 3
    assert sum(per_recipient(memory).values()) == 2


def _outcome(runtime: Runtime) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]]]:
    """Events (key, status, recipients) and deliveries (event key, subscriber address), sorted."""
    from alerts.models import Subscriber

    with transaction(runtime.engine) as session:
        events = sorted(
            (str(k), str(s), int(n))
            for k, s, n in session.execute(select(Event.idempotency_key, Event.status, Event.recipients))
        )
        deliveries = sorted(
            (str(k), str(e))
            for k, e in session.execute(
                select(Event.idempotency_key, Subscriber.email)
                .join(Delivery, Delivery.event_id == Event.id)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            )
        )
    return events, deliveries


def test_a_page_at_once_equals_publishing_each_event(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """The watcher's page transactions (alerts.intake.Prefetched) end exactly as publishing one by one."""
    from alerts.ctgov.client import RegistryClient
    from alerts.pipeline import ingest
    from alerts.watch.records import RegistryRecord
    from tests.conftest import _truncate

    _followers(runtime)
    watch()
    _a_day_of_edits(registry)
    watched = watch()
    by_page = _outcome(runtime)
    emails = per_recipient(memory)

    _truncate(runtime.engine)
    memory.clear()
    _followers(runtime)
    with RegistryClient(registry.url, rate_per_s=1000.0) as client:
        records = client.studies_page(since=registry.today, page_size=1000).studies
    # Bootstrap again from the registry as it was on the first day, then publish the next day's records
    # one event at a time, as any producer would.
    first_day = [r for r in all_studies() if r["protocolSection"]["identificationModule"]["nctId"] != NEW_TRIAL]
    with RegistryStandIn(first_day) as before:
        assert watch(client=fast_client(before)).bootstrap
    seen_at = "2026-11-28T09:00:00+00:00"
    kinds = {key.split(":")[4]: key.split(":")[3] for key, _, _ in by_page[0]}
    for record in records:
        facts = RegistryRecord.of(record)
        condition = facts.condition()
        assert facts.nct_id is not None and condition is not None
        new = kinds[facts.nct_id] == "new"
        payload = facts.new_trial_event(seen_at, condition) if new else facts.changed_event(seen_at)
        ingest(runtime, payload, inline, source="test")
    assert watched.counts["read"] == len(records) == 3
    assert _outcome(runtime) == by_page
    assert per_recipient(memory) == emails


def test_a_limited_bootstrap_keeps_the_most_recently_updated_trials(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport
) -> None:
    from alerts.ctgov.standin import last_update

    runtime.settings.watch_bootstrap_records, runtime.settings.watch_page_size = 50, 20
    report = watch()
    assert report.bootstrap and report.counts == {"read": 50, "stored": 50} and report.pages == 3
    with transaction(runtime.engine) as session:
        stored = {str(n) for n in session.scalars(select(Trial.nct_id))}
    dates = sorted(
        (
            (last_update(r) or "", r["protocolSection"]["identificationModule"]["nctId"])
            for r in all_studies()
            if r["protocolSection"]["identificationModule"]["nctId"] != NEW_TRIAL
        ),
        reverse=True,
    )
    assert min(d for d, n in dates if n in stored) >= max(d for d, n in dates if n not in stored)
    assert memory.batches == []


def test_digest_followers_hold_what_the_watcher_finds(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, memory: MemoryTransport
) -> None:
    """A page skips the holding statement only for events no digest subscription follows
    (alerts.intake.Prefetched): digest followers of a changed trial and of a new trial's condition hold
    their items, immediate followers get their emails, on the same page."""
    from alerts.models import HeldItem

    follow(runtime, "changes@example.org", trial=CHANGES)
    follow(runtime, "daily@example.org", trial=CHANGES, frequency="daily")
    follow(runtime, "noise@example.org", trial=NOISE, frequency="weekly")
    follow(runtime, "weekly@example.org", condition="NASH", frequency="weekly")
    watch()
    _a_day_of_edits(registry)
    report = watch()
    assert report.counts["published:trial.new_for_condition"] == 1
    assert per_recipient(memory) == {"changes@example.org": 1}
    with transaction(runtime.engine) as session:
        held = session.execute(select(HeldItem.dedupe_key, HeldItem.weekly)).all()
    # The noise holds nothing; the material change and the new trial one item each.
    assert sorted((key.split(":")[0], weekly) for key, weekly in held) == [("changed", False), ("new", True)]
