"""The ``alerts`` command."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from alerts.cli_digests import digests_app
from alerts.cli_suppressions import suppressions_app
from alerts.config import ConfigError, get_settings

app = typer.Typer(help="Trial alerts: email alerts for clinical-trial changes.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
events_app = typer.Typer(help="Events received and rejected.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(events_app, name="events")
vocabulary_app = typer.Typer(help="Condition vocabulary learned from MeSH indexing.", no_args_is_help=True)
app.add_typer(vocabulary_app, name="vocabulary")
app.add_typer(suppressions_app, name="suppressions")
app.add_typer(digests_app, name="digests")
console = Console()


def _runtime() -> Any:
    from alerts.logs import configure_logging
    from alerts.runtime import get_runtime

    try:
        runtime = get_runtime()
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    configure_logging(runtime.settings)
    return runtime


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or migrate the database schema (ALERTS_DATABASE_URL)."""
    from alerts.db import upgrade

    settings = _runtime().settings
    upgrade(settings.database_url, revision)
    console.print(f"database at revision {revision}")


@app.command()
def publish(
    files: Annotated[list[Path], typer.Argument(help="JSON files: one event object or a list of them")],
    sync: Annotated[bool, typer.Option(help="process here instead of queueing for a worker")] = False,
) -> None:
    """Publish trial events (validated here; invalid ones are recorded with their reason)."""
    from alerts.events import TrialEvent
    from alerts.pipeline import Rejected, ingest, validate
    from alerts.tasks.enqueue import CeleryEnqueue

    runtime = _runtime()
    enqueue = CeleryEnqueue()
    failures = 0
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            console.print(f"[red]{path}: cannot read JSON: {exc}[/red]")
            failures += 1
            continue
        for index, payload in enumerate(data if isinstance(data, list) else [data]):
            where = f"{path}[{index}]" if isinstance(data, list) else str(path)
            outcome = ingest(runtime, payload, enqueue, source="cli") if sync else validate(runtime, payload, "cli")
            if isinstance(outcome, Rejected):
                failures += 1
                reasons = "; ".join(f"{e['field']}: {e['message']}" for e in outcome.errors)
                console.print(f"[red]{where}: rejected (#{outcome.rejection_id}): {reasons}[/red]")
            elif isinstance(outcome, TrialEvent):
                enqueue.trial_event(payload)
                console.print(f"{where}: queued {outcome.type} for {outcome.nct_id}")
            else:
                console.print(
                    f"{where}: {outcome.status}, {outcome.recipients} recipient(s) (event {outcome.event_id})"
                )
    raise typer.Exit(1 if failures else 0)


@events_app.command("rejected")
def events_rejected(
    limit: int = 50, as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False
) -> None:
    """Events refused as invalid, newest first, with the reason."""
    from alerts.db import transaction
    from alerts.models import RejectedEvent

    runtime = _runtime()
    with transaction(runtime.engine) as session:
        rows = session.scalars(select(RejectedEvent).order_by(RejectedEvent.id.desc()).limit(limit)).all()
        items: list[dict[str, Any]] = [
            {
                "id": r.id,
                "received_at": r.received_at.isoformat(),
                "source": r.source,
                "type": r.event_type,
                "event_id": r.producer_event_id,
                "errors": r.errors,
                "payload": r.payload_excerpt[:200],
            }
            for r in rows
        ]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = Table(title=f"Rejected events (newest {len(items)})")
    for column in ("id", "received", "source", "type", "event id", "why"):
        table.add_column(column)
    for item in items:
        why = "\n".join(f"{e['field']}: {e['message']}" for e in item["errors"])
        table.add_row(
            str(item["id"]), item["received_at"][:19], item["source"], item["type"] or "-", item["event_id"] or "-", why
        )
    console.print(table)


@events_app.command("list")
def events_list(limit: int = 30) -> None:
    """Events received, newest first: what each did."""
    from alerts.db import transaction
    from alerts.models import Event

    runtime = _runtime()
    table = Table(title="Events")
    for column in ("id", "received", "type", "trial", "status", "recipients", "note"):
        table.add_column(column)
    with transaction(runtime.engine) as session:
        for e in session.scalars(select(Event).order_by(Event.id.desc()).limit(limit)):
            table.add_row(
                str(e.id),
                e.received_at.isoformat()[:19],
                e.type,
                e.nct_id,
                e.status,
                str(e.recipients),
                e.reason or ", ".join(c["label"] for c in e.changes),
            )
    console.print(table)


@vocabulary_app.command("learn")
def vocabulary_learn(
    dump: Annotated[
        Path | None,
        typer.Argument(
            help="a dump of records: a folder of v2 JSON files, a JSON-lines file, or a PagedStudies JSON file",
            exists=True,
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="records per transaction")] = 500,
) -> None:
    """Teach the condition vocabulary: from a dump of registry records (a new deployment's cold start), or
    without DUMP from stored trials it has not learned from (stored before 0002, counted before 0011)."""
    from alerts import dumps, vocabulary
    from alerts.db import transaction

    runtime = _runtime()
    if dump is None:
        with transaction(runtime.engine) as session:
            count = vocabulary.learn_stored_trials(session, batch=batch)
            # Meanings follow evidence as it changes; after a migration the rule itself may have changed.
            changed = vocabulary.resolve_all(session)
        console.print(f"learned from {count} stored trial(s); {changed} phrase meaning(s) changed")
        return
    learned = skipped = changed = 0
    items = dumps.studies(dump)
    while True:
        # One transaction per batch: a long import keeps what it learned if it is stopped.
        chunk = [item for _, item in zip(range(batch), items, strict=False)]
        if not chunk:
            break
        with transaction(runtime.engine) as session:
            for item in chunk:
                problem = item.problem
                if item.record is not None:
                    try:
                        changed += len(vocabulary.learn_record(session, item.record))
                        learned += 1
                    except ValueError as exc:
                        problem = str(exc)
                if problem is not None:
                    skipped += 1
                    console.print(f"[yellow]skipped {item.where}: {problem}[/yellow]")
    console.print(f"learned from {learned} record(s), skipped {skipped}; {changed} phrase meaning(s) changed")
    if skipped:
        raise typer.Exit(1)


@vocabulary_app.command("why")
def vocabulary_why(phrase: str) -> None:
    """What PHRASE means today, and how and why its meaning changed (newest first)."""
    from alerts import vocabulary
    from alerts.db import transaction

    runtime = _runtime()
    with transaction(runtime.engine) as session:
        now = vocabulary.meaning(session, phrase)
        changes = vocabulary.history(session, phrase)
        if not now.known:
            console.print(f"{now.key!r}: no record has used this phrase; it follows its words only")
        else:
            means = ", ".join(f"{c.id} {c.term}" for c in now.concepts) or "no concept (its words only)"
            console.print(f"{now.key!r} means: {means}")
        table = Table(title="How its meaning changed")
        for column in ("when", "before", "after", "subscriptions", "why"):
            table.add_column(column)
        for row in changes:
            table.add_row(
                row.resolved_at.strftime("%Y-%m-%d %H:%M"),
                ", ".join(row.before) or "-",
                ", ".join(row.after) or "-",
                str(row.subscriptions),
                row.reason,
            )
    console.print(table)


@vocabulary_app.command("suggest")
def vocabulary_suggest(query: str) -> None:
    """What the sign-up form would suggest for QUERY (GET /api/conditions)."""
    from alerts import vocabulary
    from alerts.db import transaction

    runtime = _runtime()
    table = Table(title=f"Suggestions for {query!r}")
    for column in ("label", "concept", "term", "trials"):
        table.add_column(column)
    with transaction(runtime.engine) as session:
        for item in vocabulary.suggest(session, query):
            table.add_row(item.label, item.concept or "-", item.term or "-", str(item.trials))
    console.print(table)


@app.command()
def subscribe(
    email: str,
    trial: Annotated[str | None, typer.Option(help="NCT ID to follow")] = None,
    condition: Annotated[str | None, typer.Option(help="condition to follow")] = None,
) -> None:
    """Sign someone up (pending) and queue the confirmation email, as the web form does."""
    from alerts import subscriptions
    from alerts.addresses import InvalidAddress
    from alerts.db import transaction
    from alerts.tasks.enqueue import CeleryEnqueue

    if bool(trial) == bool(condition):
        console.print("[red]give exactly one of --trial or --condition[/red]")
        raise typer.Exit(2)
    runtime = _runtime()
    try:
        target = subscriptions.trial_target(trial) if trial else subscriptions.condition_target(condition or "")
        with transaction(runtime.engine) as session:
            signup = subscriptions.sign_up(session, email, target, runtime.signer, runtime.hasher)
    except (InvalidAddress, subscriptions.InvalidTarget) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if signup.needs_confirmation:
        CeleryEnqueue().send_confirmation(signup.subscription_id)
        console.print(f"subscription {signup.subscription_id}: pending, confirmation email queued")
    else:
        console.print(f"subscription {signup.subscription_id}: already active")


@app.command()
def worker(
    concurrency: int = 2,
    queues: str = "events,deliveries,maintenance",  # alerts.tasks.app.ALL_QUEUES, spelled out for --help
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker (same as ``celery -A alerts.tasks.app worker``)."""
    from alerts.tasks.app import worker_command

    argv = worker_command(queues=queues, concurrency=concurrency, loglevel=loglevel)
    os.execv(sys.executable, argv)  # noqa: S606 - replaces this process with the worker


@app.command()
def web(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the subscriber pages and the JSON API with uvicorn."""
    import uvicorn

    from alerts.web.server import GatheringHttpToolsProtocol

    _runtime()
    # log_config=None: uvicorn keeps the JSON logging configured above instead of installing its own.
    # No access log: request paths carry link tokens (unsubscribe, manage), which are credentials.
    # proxy_headers=False: uvicorn would trust X-Forwarded-For from loopback by default; the app trusts
    # exactly ALERTS_TRUSTED_PROXIES instead (alerts.web.app).
    # uvloop and httptools (dependencies on Linux): uvicorn's fastest event loop and HTTP parser, for the burst
    # of link fetches mail scanners make after a send (benchmarks/README.md); its httptools protocol sends each
    # response's headers and body in one write (alerts.web.server).
    uvicorn.run(
        "alerts.web.main:app",
        host=host,
        port=port,
        workers=workers,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=GatheringHttpToolsProtocol,
        proxy_headers=False,
        log_config=None,
        access_log=False,
    )


@app.command()
def demo(
    outbox: Annotated[Path | None, typer.Option(help="where the emails are written")] = None,
    workspace: Annotated[Path, typer.Option(help="demo database and broker folder (wiped)")] = Path("var/demo"),
) -> None:
    """Run the whole product on embedded defaults: worker, subscribers, events, emails in a folder."""
    from alerts.demo.run import run_demo

    try:
        run_demo(workspace.resolve(), outbox.resolve() if outbox else None)
    except TimeoutError as exc:
        console.print(f"[red]demo failed: {exc}; see {workspace / 'worker.log'}[/red]")
        raise typer.Exit(1) from None


def _register_ops() -> None:
    from alerts import cli_ops, cli_watch

    app.command()(cli_watch.watch)

    app.command()(cli_ops.status)
    app.command()(cli_ops.retry)
    app.command()(cli_ops.replay)
    app.add_typer(cli_ops.deliveries_app, name="deliveries")


_register_ops()


def main() -> None:
    try:
        get_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None
    app()
