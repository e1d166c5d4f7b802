"""Operator commands: ``alerts status``, ``alerts deliveries failed``, ``alerts retry``."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

deliveries_app = typer.Typer(help="Deliveries: what failed and why.", no_args_is_help=True)
console = Console()


def parse_since(value: str | None) -> datetime | None:
    """``2h``, ``30m``, ``7d`` ago, or an ISO 8601 date-time."""
    if not value:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("use e.g. 30m, 2h, 7d or 2026-11-25T10:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _runtime() -> Any:
    from alerts.cli import _runtime as runtime

    return runtime()


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _queues_table(status: Any) -> Table:
    queues = Table(title="Broker queues", expand=False)
    queues.add_column("queue")
    queues.add_column("waiting", justify="right")
    for name, depth in status.queues.items():
        queues.add_row(name, "unknown" if depth is None else str(depth))
    if status.quarantine is not None:
        queues.add_row("quarantined files", str(status.quarantine.files))
    return queues


def _workers_table(status: Any) -> Table:
    workers = Table(title="Workers")
    workers.add_column("worker")
    workers.add_column("active tasks", justify="right")
    for name in status.workers.online:
        workers.add_row(name, str(status.workers.active_tasks.get(name, 0)))
    if not status.workers.online:
        workers.add_row(status.workers.note or "[red]none online[/red]", "-")
    return workers


def _mail_table(status: Any) -> Table:
    mail = status.mail
    table = Table(show_header=False, title="Mail flowing now")
    table.add_row("last send", _ago(mail.last_sent_ago_s))
    table.add_row("sent per minute (last 5 min)", f"{mail.per_minute_last_5_min:g}")
    table.add_row("throttled by provider (429, last hour)", str(mail.throttled_last_hour))
    answers = ", ".join(f"{code}: {n}" for code, n in mail.provider_answers_last_hour.items()) or "none"
    table.add_row("provider answers (last hour)", answers)
    table.add_row("provider timeouts (last hour)", str(mail.provider_timeouts_last_hour))
    table.add_row("possible duplicates (last 24 h)", str(mail.possible_duplicates_last_day))
    return table


def _events_table(status: Any) -> Table:
    events = Table(title="Events")
    events.add_column("window")
    for column in ("received", "fanned_out", "no_op", "rejected"):
        events.add_column(column.replace("_", " "), justify="right")
    for window, counts in status.events.items():
        events.add_row(f"last {window}", *(str(counts[c]) for c in ("received", "fanned_out", "no_op", "rejected")))
    return events


def _deliveries_tables(status: Any) -> list[Table]:
    deliveries = Table(title="Deliveries")
    deliveries.add_column("status")
    deliveries.add_column("count", justify="right")
    for name, count in status.deliveries.items():
        deliveries.add_row(name, str(count))
    age = status.oldest_undelivered_s
    facts = Table(show_header=False, title="Health")
    facts.add_row("oldest undelivered", "none waiting" if age is None else f"{age:.0f} s")
    facts.add_row("stuck in sending", str(status.stuck_sending))
    facts.add_row("ambiguous re-sends (all time)", str(status.ambiguous_retries))
    facts.add_row("suppressed addresses", str(status.suppressions))
    signup_age = status.oldest_signup_s
    facts.add_row(
        "sign-ups waiting for a worker",
        str(status.signups_waiting) + ("" if signup_age is None else f" (oldest {signup_age:.0f} s)"),
    )
    failures = Table(title="Top failure reasons")
    failures.add_column("code")
    failures.add_column("error", overflow="fold")
    failures.add_column("count", justify="right")
    for item in status.top_failures:
        failures.add_row(str(item["code"] or "-"), (item["error"] or "-")[:200], str(item["count"]))
    return [deliveries, facts, failures]


def status_view(status: Any) -> Group:
    problems = status.problems
    headline = Panel(
        "\n".join(f"[red]• {escape(p)}[/red]" for p in problems) if problems else "[green]all clear[/green]",
        title=f"trial alerts status at {status.generated_at[:19]}Z",
    )
    parts: list[Any] = [headline, _queues_table(status), _workers_table(status)]
    if status.mail is not None:
        parts.append(_mail_table(status))
    parts += [_events_table(status), *_deliveries_tables(status)]
    if getattr(status, "watch", None) is not None:
        from alerts.watch.status import rows

        watcher = Table(show_header=False, title="Registry watcher")
        for label, value in rows(status.watch):
            watcher.add_row(label, value)
        parts.append(watcher)
    return Group(*parts)


def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    watch: Annotated[float, typer.Option(help="refresh every N seconds (0: once)")] = 0.0,
) -> None:
    """Queues, workers, mail flow, events, deliveries and failures at a glance.

    --json: exit code 1 when something needs attention ("attention" lists it); with --watch, one JSON object
    per line per refresh.
    """
    from alerts.status import collect
    from alerts.tasks.app import create_app

    runtime = _runtime()
    app = create_app(runtime.settings)

    def frame() -> Any:
        return collect(runtime.engine, app, settings=runtime.settings)

    current = frame()
    if watch <= 0:
        if as_json:
            print(json.dumps(current.as_dict(), indent=2, default=str))
            raise typer.Exit(1 if current.problems else 0)
        console.print(status_view(current))
        return
    if as_json or not console.is_terminal:
        # Not a terminal (a log file, a pipe): a live display would write nothing until the end. Write
        # every frame instead, one JSON object per line with --json.
        while True:
            if as_json:
                print(json.dumps(current.as_dict(), default=str), flush=True)
            else:
                console.print(status_view(current))
                console.print(f"-- next refresh in {watch:g} s --")
                console.file.flush()
            time.sleep(watch)
            current = frame()
    with Live(status_view(current), console=console, refresh_per_second=1, screen=False) as live:
        while True:
            time.sleep(watch)
            live.update(status_view(frame()))


# Operators read these in 80-column terminals (and paste them into tickets): tables never get wider.
NARROW = 80


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%m-%d %H:%M")


@deliveries_app.command("failed")
def deliveries_failed(
    since: Annotated[str | None, typer.Option(help="only failures since: 30m, 2h, 7d or ISO time")] = None,
    limit: Annotated[int, typer.Option(help="with --each or --json: at most this many deliveries")] = 100,
    each: Annotated[bool, typer.Option("--each", help="one line per delivery instead of per reason")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one object per failed delivery")] = False,
) -> None:
    """Failed deliveries grouped by the provider's reason, with counts (no addresses shown)."""
    from alerts.db import transaction
    from alerts.recovery import failed_deliveries, failure_reasons

    runtime = _runtime()
    with transaction(runtime.engine) as session:
        rows = failed_deliveries(session, parse_since(since), limit) if each or as_json else []
        reasons = [] if each or as_json else failure_reasons(session, parse_since(since))
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
        return
    width = min(console.width, NARROW)
    if each:
        table = Table(title=f"Failed deliveries ({len(rows)}, newest first)", width=width)
        for column in ("delivery", "event", "trial", "tries", "code"):
            table.add_column(column, no_wrap=True)
        table.add_column("reason", overflow="ellipsis", no_wrap=True, ratio=1)
        table.add_column("failed (UTC)", no_wrap=True)
        for r in rows:
            table.add_row(
                str(r.delivery_id),
                str(r.event_id),
                r.nct_id,
                str(r.attempts),
                str(r.error_code or "-"),
                r.error or "-",
                _when(r.failed_at),
            )
        console.print(table)
        return
    total = sum(group.count for group in reasons)
    table = Table(title=f"Failed deliveries by reason ({total} in {len(reasons)} group(s))", width=width)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("code", no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=1)
    table.add_column("events", justify="right", no_wrap=True)
    table.add_column("last (UTC)", no_wrap=True)
    for group in reasons:
        table.add_row(
            str(group.count),
            str(group.error_code or "-"),
            group.error or "-",
            str(group.events),
            _when(group.last_failed_at),
        )
    console.print(table)
    if reasons:
        console.print("Fix the cause, then: alerts retry --failed [--since 2h]. Each one: --each.", width=width)


def retry(
    failed: Annotated[bool, typer.Option("--failed", help="re-queue failed deliveries")] = False,
    since: Annotated[str | None, typer.Option(help="only those failed since: 30m, 2h, 7d or ISO time")] = None,
) -> None:
    """Put failed deliveries back in the queue (each recipient still gets at most one email)."""
    from alerts.db import transaction
    from alerts.recovery import requeue_failed
    from alerts.tasks.enqueue import CeleryEnqueue

    if not failed:
        console.print("[red]say what to retry: --failed[/red]")
        raise typer.Exit(2)
    runtime = _runtime()
    with transaction(runtime.engine) as session:
        ranges = requeue_failed(session, runtime.settings.batch_size, parse_since(since))
    enqueue = CeleryEnqueue()
    for event_id, after_id, upto_id in ranges:
        enqueue.send_batch(event_id, after_id, upto_id)
    console.print(f"re-queued failed deliveries of {len({r[0] for r in ranges})} event(s) in {len(ranges)} batch(es)")


def replay(
    event_id: int,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show who would receive it; change nothing")] = False,
) -> None:
    """Match an event again against today's subscriptions and send it to those it has not reached."""
    from alerts.db import transaction
    from alerts.recovery import CannotReplay
    from alerts.recovery import replay as do_replay
    from alerts.tasks.enqueue import CeleryEnqueue

    runtime = _runtime()
    try:
        with transaction(runtime.engine) as session:
            result = do_replay(session, event_id, runtime.settings.batch_size, dry_run)
    except CannotReplay as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    table = Table(title=f"Event {event_id}: {result.new_recipients} subscriber(s) not yet reached")
    for column in ("subscriber", "subscription", "follows"):
        table.add_column(column)
    for subscriber_id, subscription_id, variant in result.sample:
        table.add_row(str(subscriber_id), str(subscription_id), variant or "-")
    console.print(table)
    if dry_run:
        console.print("dry run: nothing was changed")
        return
    enqueue = CeleryEnqueue()
    for ev, after_id, upto_id in result.ranges:
        enqueue.send_batch(ev, after_id, upto_id)
    console.print(f"queued {len(result.ranges)} batch(es)")
