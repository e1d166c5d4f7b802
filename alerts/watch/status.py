"""Where the registry watcher stands, for ``alerts status``, ``/ops`` and ``/metrics``.

Read from its state row (``watch_state``): the last pass (start, end, outcome, figures), the pass in
progress, the registry's data timestamp and the cursor, the last error, and when beat runs the next pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from alerts.config import Settings
from alerts.db import transaction
from alerts.models import WatchState, utcnow
from alerts.watch.lock import STATE

# A watcher whose last good pass is older than this many intervals needs a look.
LATE_INTERVALS = 3


@dataclass
class WatchStatus:
    enabled: bool
    registry: str
    interval_s: float
    cursor: str | None = None  # the next pass reads records updated on or after this date
    data_timestamp: str | None = None  # the registry's data timestamp at the last finished pass
    running: bool = False
    lock_until: str | None = None
    in_progress: dict[str, Any] | None = None  # window, started, figures so far (resumes here if it died)
    last_pass: dict[str, Any] | None = None
    last_success_at: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    next_pass_at: str | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def collect(engine: Engine, settings: Settings) -> WatchStatus:
    status = WatchStatus(settings.watch_enabled, settings.ctgov_url, settings.watch_interval_s)
    with transaction(engine) as session:
        state = session.get(WatchState, STATE)
        if state is None:
            if settings.watch_enabled:
                status.problems.append("registry watcher enabled but no pass has run yet")
            return status
        now = utcnow()
        status.cursor = state.cursor.isoformat() if state.cursor else None
        status.data_timestamp = state.data_timestamp
        status.running = state.lock_until is not None and state.lock_until > now
        status.lock_until = _iso(state.lock_until) if status.running else None
        if state.pass_started_at is not None:
            status.in_progress = {
                "started_at": _iso(state.pass_started_at),
                "bootstrap": state.pass_bootstrap,
                "window": state.pass_window.isoformat() if state.pass_window else None,
                "data_timestamp": state.pass_data_timestamp,
                "counts": dict(state.pass_counts or {}),
            }
        status.last_pass = dict(state.last_pass) if state.last_pass else None
        status.last_success_at = _iso(state.last_success_at)
        status.last_error, status.last_error_at = state.last_error, _iso(state.last_error_at)
        last_end = status.last_pass.get("finished_at") if status.last_pass else None
        if settings.watch_enabled:
            start = datetime.fromisoformat(last_end) if last_end else now
            status.next_pass_at = (start + timedelta(seconds=settings.watch_interval_s)).isoformat()
    last = status.last_pass or {}
    if last.get("outcome") == "failed":
        status.problems.append(f"registry watcher: last pass failed: {last.get('reason')}")
    if settings.watch_enabled and state.last_success_at is not None:
        late = utcnow() - state.last_success_at
        if late > timedelta(seconds=LATE_INTERVALS * settings.watch_interval_s):
            status.problems.append(f"registry watcher: no good pass for {late.total_seconds() / 3600:.1f} h")
    return status


def rows(status: WatchStatus) -> list[tuple[str, str]]:
    """The watcher's figures as (label, value) lines, shared by the CLI table and the ops page."""
    last = status.last_pass or {}
    counts: dict[str, Any] = dict(last.get("counts") or {})
    published = ", ".join(
        f"{k.removeprefix('published:')} {v}" for k, v in counts.items() if k.startswith("published:")
    )
    lines = [
        ("registry", status.registry),
        ("enabled", "yes" if status.enabled else "no (ALERTS_WATCH_ENABLED)"),
        ("running now", f"yes (lock until {status.lock_until[:19]})" if status.running and status.lock_until else "no"),
        (
            "last pass",
            f"{last.get('outcome', 'never')} {str(last.get('started_at') or '')[:19]} -> "
            f"{str(last.get('finished_at') or '')[:19]}"
            if last
            else "never",
        ),
        ("last pass reason", str(last.get("reason") or "-")),
        ("registry data timestamp", status.data_timestamp or "unknown"),
        ("cursor (next window starts)", status.cursor or "none yet (the first pass is a bootstrap)"),
        ("records read (last pass)", str(counts.get("read", 0)) if last else "unknown"),
        ("events published (last pass)", published or ("none" if last else "unknown")),
        ("records rejected (last pass)", str(counts.get("rejected", 0)) if last else "unknown"),
        ("requests / retries (last pass)", f"{last.get('requests', 0)} / {last.get('retries', 0)}" if last else "-"),
        ("last good pass", (status.last_success_at or "never")[:19]),
        ("last error", f"{(status.last_error_at or '')[:19]} {status.last_error}" if status.last_error else "none"),
        ("next pass", status.next_pass_at[:19] if status.next_pass_at else "not scheduled (watcher disabled)"),
    ]
    if status.in_progress:
        progress = status.in_progress
        read = progress["counts"].get("read", 0)
        lines.append(("pass in progress", f"since {str(progress['started_at'])[:19]}, {read} records so far"))
    return lines
