"""``alerts suppressions``: list, add and lift suppressed addresses (kept as keyed hashes, never shown)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

suppressions_app = typer.Typer(
    help="Suppressed addresses (hard bounces, spam reports, operator's): never emailed.", no_args_is_help=True
)
console = Console()


def _runtime() -> Any:
    from alerts.cli import _runtime as runtime

    return runtime()


@suppressions_app.command("list")
def list_command(
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 100,
    reason: Annotated[str | None, typer.Option(help="only this reason (bounce, spamreport, dropped...)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """Suppressions, newest first: hash prefix, reason, source, date (the address itself is not kept)."""
    from alerts.db import transaction
    from alerts.suppressions import list_suppressions

    runtime = _runtime()
    with transaction(runtime.engine) as session:
        items = [
            {
                "hash": s.email_hash[:12],
                "reason": s.reason,
                "source": s.source,
                "created_at": s.created_at.isoformat(),
                "detail": s.detail or "",
            }
            for s in list_suppressions(session, limit=limit, reason=reason)
        ]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = Table(title=f"Suppressions (newest {len(items)})")
    for column in ("hash", "reason", "source", "since", "detail"):
        table.add_column(column)
    for item in items:
        table.add_row(item["hash"], item["reason"], item["source"], item["created_at"][:19], item["detail"][:80])
    console.print(table)


@suppressions_app.command("add")
def add_command(
    email: str,
    reason: Annotated[str, typer.Option(help="why (shown to operators)")] = "operator",
    detail: Annotated[str | None, typer.Option(help="a note")] = None,
) -> None:
    """Suppress an address: it gets no email of any kind until lifted."""
    from alerts.db import transaction
    from alerts.suppressions import address_hash, suppress

    runtime = _runtime()
    with transaction(runtime.engine) as session:
        added = suppress(session, runtime.hasher, email, reason, source="operator", detail=detail)
    prefix = address_hash(runtime.hasher, email)[:12]
    console.print(f"suppressed ({prefix})" if added else f"already suppressed ({prefix})")


@suppressions_app.command("lift")
def lift_command(email: str) -> None:
    """Lift the suppression of an address (e.g. after the person fixed their mailbox)."""
    from alerts.db import transaction
    from alerts.suppressions import address_hash, lift

    runtime = _runtime()
    with transaction(runtime.engine) as session:
        lifted = lift(session, runtime.hasher, email)
    prefix = address_hash(runtime.hasher, email)[:12]
    if not lifted:
        console.print(f"[yellow]not suppressed ({prefix})[/yellow]")
        raise typer.Exit(1)
    console.print(f"lifted ({prefix})")
