"""Python's cyclic garbage collector during a registry pass: less often, and not over what lasts.

A pass allocates millions of short-lived objects (a page of 1,000 records, each parsed, diffed, unpickled
into a lane), nearly none of them in reference cycles: reference counting frees them. CPython's collector
still runs every 700 allocations, and every tenth or hundredth run scans the whole heap, the modules,
SQLAlchemy's caches and the lane's own state included. Measured with the watcher benchmark (10,000
records, two lanes): 3.6 s of the lanes' ~30 CPU-s went to collections, 0.6 s with this.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

# Allocations between young collections (CPython's default is 700): garbage in cycles waits a little longer.
YOUNG: Final = 20_000


def settle_lane() -> None:
    """For a lane, once started: what it has now (modules, engine, inliner) lasts as long as it does, so the
    collector leaves it out of every scan (which also keeps the fork server's pages shared), and collects
    less often. A lane lives for one pass."""
    gc.freeze()
    gc.set_threshold(YOUNG, *gc.get_threshold()[1:])


@contextmanager
def relaxed() -> Iterator[None]:
    """Young collections less often for the duration of a pass, then as before (the beat task runs the
    pass in a worker process that goes on with other tasks)."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
