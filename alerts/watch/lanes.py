"""Lanes: processes that apply a pass's chunks side by side (``ALERTS_WATCH_LANES``, PostgreSQL only).

One process applies a chunk in about 2 ms of CPU per record, so a day of 10,000 updated records kept one
core busy for 20 s while the other waited. A pass with lanes still reads the registry itself, one request at
a time at the registry's pace, and hands each chunk to the next free lane. A lane applies it in its own
transaction (``chunks.apply_chunk``) with its own connection and queues what it sends (``queue_accepted``).

Correctness does not depend on the order chunks commit in:

- each record's ``watch_records`` row marks it done by this pass, in the chunk's transaction; the pass
  keeps its place per page (the page's first record) and a resumed pass skips what is already done;
- chunks of one page hold row locks on different trials; the vocabulary is serialized
  (``vocabulary.serialize_learning``);
- the lanes are forked from multiprocessing's fork server (``spawn`` where there is none): they inherit no
  connection, broker channel or thread from the pass, and the modules they need are imported once, by the
  fork server, not once per lane (about 2 s of CPU each; in a worker the server outlives the pass);
- they end within a fifth of a second of the pass (a killed worker): their open transactions roll back, and
  whatever they committed before is skipped by its marks when the pass resumes.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from multiprocessing.context import BaseContext
from typing import Any

from alerts import pipeline
from alerts.config import Settings
from alerts.rendering import load_inliner
from alerts.runtime import Runtime, get_runtime, set_runtime
from alerts.watch import chunks, collector

_WATCH_PASS_S = 0.2  # how often a lane checks that its pass is still there

# Set in each lane by ``_start``.
_enqueue: pipeline.Enqueue | None = None


@dataclass(frozen=True)
class Job:
    """One chunk for a lane (pickled to it): the records and everything ``apply_chunk`` needs."""

    studies: list[Any]
    owner: str
    window: date | None
    seen_at: str
    pass_mark: datetime


@dataclass(frozen=True)
class Done:
    """What a lane reports back once the chunk committed and its sends were queued."""

    counts: Counter[str]
    max_seen: date | None


# What the fork server imports once for every lane it forks (nothing that reads settings on import).
# (kombu's Redis transport: the broker the lanes queue sends on, imported on its first use otherwise.)
_PRELOAD = ["alerts.watch.lanes", "premailer", "kombu.transport.redis"]


def _context() -> BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)  # only until the server starts: then it has them
        return context
    return multiprocessing.get_context("spawn")


def _watch_pass(pass_pid: int) -> None:
    """End this lane as soon as the pass that started it is gone (a killed worker, ``kill -9``): its open
    transaction rolls back. A lane is the fork server's child and keeps the server alive, so neither would
    notice otherwise."""
    while True:
        time.sleep(_WATCH_PASS_S)
        try:
            os.kill(pass_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # alive, under another user: not ours to judge
            pass


def _start(pass_pid: int, settings: Settings, enqueue: Callable[[Runtime], pipeline.Enqueue]) -> None:
    global _enqueue
    threading.Thread(target=_watch_pass, args=(pass_pid,), name="watch-pass", daemon=True).start()
    from alerts.logs import configure_logging

    runtime = Runtime(settings)
    set_runtime(runtime)
    configure_logging(settings)
    _enqueue = enqueue(runtime)
    # Connected, and with the CSS inliner imported, before the first chunk arrives: the pass is still reading
    # the registry's first page meanwhile.
    runtime.engine.connect().close()
    load_inliner()
    collector.settle_lane()


def _ready() -> None:
    """A no-op: submitted once per lane so that every lane starts (and runs ``_start``) at once."""


def _apply(job: Job) -> Done:
    runtime = get_runtime()
    assert _enqueue is not None, "started by _start"
    work = chunks.apply_chunk(
        runtime,
        job.studies,
        job.owner,
        window=job.window,
        bootstrap=False,
        seen_at=job.seen_at,
        pass_mark=job.pass_mark,
        resume_at=None,
        dry_run=False,
    )
    chunks.queue_accepted(runtime, _enqueue, work)
    return Done(work.counts, work.max_seen)


class Lanes:
    """``count`` lane processes for one pass; ``enqueue`` builds each lane's queue from its runtime and must be
    importable by name (it crosses to the lanes pickled): ``alerts.tasks.enqueue.celery_enqueue`` in
    production."""

    def __init__(self, settings: Settings, count: int, enqueue: Callable[[Runtime], pipeline.Enqueue]) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=count,
            mp_context=_context(),
            initializer=_start,
            initargs=(os.getpid(), settings, enqueue),
        )
        for _ in range(count):
            self._pool.submit(_ready)

    def pids(self) -> list[int]:
        """The lanes' process ids, once started."""
        # The executor keeps them only in this attribute.
        return sorted(self._pool._processes or {})

    def submit(self, job: Job) -> Future[Done]:
        return self._pool.submit(_apply, job)

    def close(self) -> None:
        # Chunks not started yet are dropped (the pass resumes before them); started ones finish or roll back.
        self._pool.shutdown(wait=True, cancel_futures=True)
