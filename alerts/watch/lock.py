"""The watcher's lock: a lease on its state row, so two passes never run at once on any number of machines.

Taking it is one conditional UPDATE (free, expired, or held by a process of this host that no longer
exists); holding it means renewing the lease at every sign of life (each page, each wait between retries).
A pass that dies keeps the lock only until its lease runs out - or not at all when the next pass starts on
the same host - and the next pass resumes from the last committed page.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alerts.db import transaction
from alerts.models import WatchState, utcnow

STATE: str = "ctgov"


class LockLost(RuntimeError):
    """Another pass took the lock (ours expired): stop without committing anything more."""


def owner_id() -> str:
    """host:pid:random - the pid lets a pass on the same host see that a holder died."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder_dead(owner: str | None) -> bool:
    """Held by a process of this host that is gone (killed worker): no need to wait for its lease."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname()[:120] and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))


def ensure_state(engine: Engine) -> None:
    with transaction(engine) as session:
        if session.get(WatchState, STATE) is not None:
            return
    try:
        with transaction(engine) as session:
            session.execute(insert(WatchState).values(name=STATE, pass_counts={}, pass_bootstrap=False))
    except IntegrityError:
        pass  # another process created it first


def acquire(engine: Engine, owner: str, lease_s: int) -> bool:
    ensure_state(engine)
    now = utcnow()
    with transaction(engine) as session:
        holder = session.scalar(select(WatchState.lock_owner).where(WatchState.name == STATE))
        takeover = _holder_dead(holder)
        condition = or_(WatchState.lock_until.is_(None), WatchState.lock_until < now)
        if takeover:
            # Only that same (dead) holder: a live pass that took it meanwhile keeps it.
            condition = or_(condition, WatchState.lock_owner == holder)
        result = session.execute(
            update(WatchState)
            .where(WatchState.name == STATE, condition)
            .values(lock_owner=owner, lock_until=now + timedelta(seconds=lease_s))
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def renew(session: Session, owner: str, lease_s: int) -> None:
    """In the caller's transaction (a page's): commit nothing unless we still hold the lock."""
    result = session.execute(
        update(WatchState)
        .where(WatchState.name == STATE, WatchState.lock_owner == owner)
        .values(lock_until=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise LockLost("the watcher's lock expired and another pass took it")


def heartbeat(engine: Engine, owner: str, lease_s: int) -> None:
    with transaction(engine) as session:
        renew(session, owner, lease_s)


def release(engine: Engine, owner: str) -> None:
    with transaction(engine) as session:
        session.execute(
            update(WatchState)
            .where(WatchState.name == STATE, WatchState.lock_owner == owner)
            .values(lock_owner=None, lock_until=None)
            .execution_options(synchronize_session=False)
        )
