"""Operator commands: ``alerts status``, ``alerts deliveries failed``, ``alerts retry``."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
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


def status_view(status: Any) -> Group:
    queues = Table(title="Broker queues", expand=False)
    queues.add_column("queue")
    queues.add_column("waiting", justify="right")
    for name, depth in status.queues.items():
        queues.add_row(name, "?" if depth is None else str(depth))
    workers = Table(title="Workers")
    workers.add_column("worker")
    workers.add_column("active tasks", justify="right")
    for name in status.workers.online:
        workers.add_row(name, str(status.workers.active_tasks.get(name, 0)))
    if not status.workers.online:
        workers.add_row(status.workers.note or "[red]none online[/red]", "-")
    events = Table(title="Events")
    events.add_column("window")
    for column in ("received", "fanned_out", "no_op", "rejected"):
        events.add_column(column.replace("_", " "), justify="right")
    for window, counts in status.events.items():
        events.add_row(f"last {window}", *(str(counts[c]) for c in ("received", "fanned_out", "no_op", "rejected")))
    deliveries = Table(title="Deliveries")
    deliveries.add_column("status")
    deliveries.add_column("count", justify="right")
    for name, count in status.deliveries.items():
        deliveries.add_row(name, str(count))
    age = status.oldest_undelivered_s
    facts = Table(show_header=False, title="Health")
    facts.add_row("oldest undelivered", "none waiting" if age is None else f"{age:.0f} s")
    facts.add_row("stuck in sending", str(status.stuck_sending))
    facts.add_row("timeout retries (ambiguous)", str(status.ambiguous_retries))
    facts.add_row("suppressed addresses", str(status.suppressions))
    failures = Table(title="Top failure reasons")
    failures.add_column("code")
    failures.add_column("error")
    failures.add_column("count", justify="right")
    for item in status.top_failures:
        failures.add_row(str(item["code"] or "-"), (item["error"] or "-")[:80], str(item["count"]))
    problems = status.problems
    headline = Panel(
        "\n".join(f"[red]• {p}[/red]" for p in problems) if problems else "[green]all clear[/green]",
        title=f"trial alerts status at {status.generated_at[:19]}Z",
    )
    parts: list[Panel | Table] = [headline, queues, workers, events, deliveries, facts, failures]
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
    """Queues, workers, events, deliveries and failures at a glance."""
    from alerts.status import collect
    from alerts.tasks.app import create_app

    runtime = _runtime()
    app = create_app(runtime.settings)
    current = collect(runtime.engine, app, settings=runtime.settings)
    if as_json:
        print(json.dumps(current.as_dict(), indent=2, default=str))
        raise typer.Exit(1 if current.problems else 0)
    if watch <= 0:
        console.print(status_view(current))
        return
    with Live(status_view(current), console=console, refresh_per_second=1, screen=False) as live:
        while True:
            time.sleep(watch)
            live.update(status_view(collect(runtime.engine, app, settings=runtime.settings)))


@deliveries_app.command("failed")
def deliveries_failed(
    since: Annotated[str | None, typer.Option(help="only failures since: 30m, 2h, 7d or ISO time")] = None,
    limit: int = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Failed deliveries, newest first, with the provider's reason (no addresses shown)."""
    from alerts.db import transaction
    from alerts.recovery import failed_deliveries

    runtime = _runtime()
    with transaction(runtime.engine) as session:
        rows = failed_deliveries(session, parse_since(since), limit)
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
        return
    table = Table(title=f"Failed deliveries ({len(rows)})")
    for column in ("delivery", "event", "trial", "type", "attempts", "code", "reason", "failed at"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r.delivery_id),
            str(r.event_id),
            r.nct_id,
            r.event_type,
            str(r.attempts),
            str(r.error_code or "-"),
            (r.error or "-")[:90],
            r.failed_at.isoformat()[:19],
        )
    console.print(table)


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
