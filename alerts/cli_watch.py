"""``alerts watch``: one pass of the registry watcher, then exit (the beat task runs the same pass)."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
EXIT_BUSY = 75  # EX_TEMPFAIL: another pass is running; try later


def _since(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("use a date such as 2026-11-20") from None


def watch(
    bootstrap: Annotated[
        bool, typer.Option("--bootstrap", help="store every record and learn conditions; send nothing")
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="read records last updated on or after DATE (YYYY-MM-DD) instead of the cursor")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="read and decide, then roll back: nothing stored, nothing sent")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable report")] = False,
) -> None:
    """One pass over ClinicalTrials.gov: what changed becomes events (see docs/operations.md)."""
    from alerts.cli import _runtime
    from alerts.tasks.enqueue import CeleryEnqueue, celery_enqueue
    from alerts.watch.passes import run_pass

    start = _since(since)
    if bootstrap and start is not None:
        console.print("[red]give --bootstrap or --since, not both[/red]")
        raise typer.Exit(2)
    runtime = _runtime()
    report = run_pass(
        runtime,
        CeleryEnqueue(),
        bootstrap=bootstrap,
        since=start,
        dry_run=dry_run,
        lanes=runtime.settings.watch_lanes,
        lane_enqueue=celery_enqueue,
    )
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        table = Table(show_header=False, title=f"Watch pass: {report.outcome}")
        table.add_row("reason", report.reason or "-")
        table.add_row("kind", "bootstrap (nothing sent)" if report.bootstrap else "changes and new trials")
        table.add_row("window", f"updated on or after {report.window}" if report.window else "every record")
        table.add_row("registry data", report.data_timestamp or "unknown")
        table.add_row("resumed", "yes" if report.resumed else "no")
        table.add_row("pages / requests / retries", f"{report.pages} / {report.requests} / {report.retries}")
        for name, value in report.counts.items():
            table.add_row(name.replace("published:", "published "), str(value))
        table.add_row("next cursor", report.cursor or "-")
        table.add_row("took", f"{report.seconds:.1f} s")
        console.print(table)
        if dry_run:
            console.print("dry run: nothing was stored or sent")
    if report.outcome == "failed":
        raise typer.Exit(1)
    if report.outcome == "busy":
        raise typer.Exit(EXIT_BUSY)
