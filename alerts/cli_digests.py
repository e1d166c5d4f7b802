"""``alerts digests``: run the schedule tick by hand (safe: windows are keys), and digests by status."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

digests_app = typer.Typer(help="Daily and weekly digests.", no_args_is_help=True)
console = Console()


def _runtime() -> Any:
    from alerts.cli import _runtime as runtime

    return runtime()


def parse_instant(value: str) -> datetime:
    """An ISO 8601 instant with a UTC offset ("2026-12-01T08:00:00Z"); a naive time is refused, not guessed."""
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter("not an ISO 8601 date-time, e.g. 2026-12-01T08:00:00Z") from None
    if instant.tzinfo is None:
        raise typer.BadParameter("needs a UTC offset, e.g. 2026-12-01T08:00:00Z")
    return instant


@digests_app.command("tick")
def tick(
    now: Annotated[str | None, typer.Option(help="close the windows due at this instant (default: now)")] = None,
    sync: Annotated[bool, typer.Option(help="send in this process instead of queueing send tasks")] = False,
) -> None:
    """Close every digest window due now (what beat runs every minute). Running it twice sends nothing twice."""
    from alerts import pipeline

    runtime = _runtime()
    if sync:

        def enqueue(after_id: int, upto_id: int) -> None:
            pipeline.send_digests(runtime, after_id, upto_id)
    else:
        from alerts.tasks.enqueue import CeleryEnqueue

        enqueue = CeleryEnqueue().send_digests
    report = pipeline.digest_tick(runtime, enqueue, parse_instant(now) if now else None)
    console.print(f"{report.due} subscribers due in {report.groups} groups; {report.digests} digests")


@digests_app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False) -> None:
    """Digests by status, and subscribers whose window is overdue by more than five minutes."""
    from datetime import timedelta

    from sqlalchemy import func, select

    from alerts.db import transaction
    from alerts.models import Digest, Subscriber, utcnow

    runtime = _runtime()
    with transaction(runtime.engine) as session:
        counts = {s: int(n) for s, n in session.execute(select(Digest.status, func.count()).group_by(Digest.status))}
        overdue = int(
            session.scalar(select(func.count()).where(Subscriber.digest_due_at < utcnow() - timedelta(minutes=5))) or 0
        )
    if as_json:
        print(json.dumps({"digests": counts, "overdue_subscribers": overdue}))
        return
    table = Table("status", "digests")
    for name, count in sorted(counts.items()):
        table.add_row(name, str(count))
    console.print(table)
    console.print(f"subscribers overdue by more than 5 minutes: {overdue}")
