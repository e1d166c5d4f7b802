"""alerts.watch.collector: the garbage collector during a pass."""

from __future__ import annotations

import gc

from alerts.watch import collector


def test_a_pass_relaxes_the_collector_and_leaves_it_as_it_found_it() -> None:
    before = gc.get_threshold()
    with collector.relaxed():
        assert gc.get_threshold() == (collector.YOUNG, *before[1:])
    assert gc.get_threshold() == before


def test_the_collector_is_restored_when_a_pass_fails() -> None:
    before = gc.get_threshold()
    try:
        with collector.relaxed():
            raise RuntimeError("the registry is down")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before


def test_a_settled_lane_leaves_what_it_started_with_out_of_collections() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        lasting = [[n] for n in range(1000)]  # lists: tracked by the collector
        collector.settle_lane()
        assert gc.get_freeze_count() >= frozen + len(lasting)
        assert gc.get_threshold()[0] == collector.YOUNG
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
