"""The benchmarks keep working: small runs of benchmarks/fanout.py on the real parts.

Only correctness is asserted (everyone reached once, every figure reported); speed is read from the
benchmarks' output (benchmarks/README.md), never asserted in tests.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.fanout import run_batched, run_naive


def test_fanout_benchmark_reaches_everyone_once(tmp_path: Path) -> None:
    # 2,500 followers: the event's own chunk of 2,000, then one more chunk (alerts.fanout).
    result = run_batched(2500, tmp_path, timeout_s=120)
    assert (result["missing"], result["duplicated"]) == (0, 0)
    assert result["requests"] == 3 and result["wall_s"] is not None
    assert {"rows_s", "render_s", "fanout_s", "claim_s", "build_s", "http_s", "record_s"} <= set(result["stages_s"])
    assert set(result["cpu_s"]) == {"worker", "postgres", "standin", "redis"}
    assert len(result["no_match_event_ms"]) == 5
    assert all(0 < mib < 1024 for mib in result["worker_peak_rss_mib"].values())
    assert 0 < result["worker_pss_total_mib"] <= result["worker_peak_rss_total_mib"]


def test_naive_benchmark_reaches_everyone_once(tmp_path: Path) -> None:
    result = run_naive(20, tmp_path, timeout_s=120)
    assert (result["missing"], result["duplicated"], result["requests"]) == (0, 0, 20)


def test_watch_benchmark_totals_survive_a_kill(tmp_path: Path) -> None:
    from benchmarks.watch import one_run

    once = one_run(200, 40, False, tmp_path, page_size=50, rate_per_s=20.0)
    killed = one_run(200, 40, True, tmp_path, page_size=50, rate_per_s=20.0)
    assert once["killed"] == [False] and killed["killed"] == [True, False]
    assert once["last pass counts"]["read"] == 200 and killed["last pass"]["resumed"]
    for key in ("events", "deliveries", "distinct (news, subscriber)", "subscribers reached", "rejected", "cursor"):
        assert once[key] == killed[key], key
    assert once["deliveries"] == once["distinct (news, subscriber)"] > 0
    assert all(0 < mib < 1024 for mib in once["peak_rss_mib"] + killed["peak_rss_mib"])


def test_fanout_benchmark_with_every_follower_placed_reaches_everyone_once(tmp_path: Path) -> None:
    # Every follower has a city and a distance: one request per batch still (the near-you parts are
    # per-recipient fragments, alerts.contents), and the distance filter lets everyone through.
    result = run_batched(2500, tmp_path, timeout_s=120, placed=True)
    assert (result["missing"], result["duplicated"], result["requests"]) == (0, 0, 3)
    assert result["placed"] is True


def test_digest_benchmark_reaches_everyone_once(tmp_path: Path) -> None:
    # 2,500 random digests (1-20 of 200 items each): the tick in chunks, every digest one personalization
    # of a packed or shared request (none alone: the byte budget), the duplicated tick skipped or empty.
    from benchmarks.digest import run

    result = run(2500, identical=False, pack_limit=None, tmp=tmp_path, timeout_s=180)
    assert (result["missing"], result["duplicated"]) == (0, 0) and result["wall_s"] is not None
    sends = result["sends"]
    assert sends["sent"] == 2500 and sends["alone"] == 0 and sends["failed"] == 0
    assert 0 < sends["shortened"] < 2500, "long digests link to their page, most fit whole"
    # Three batches of ≤ 1,000: one packed request each, plus one per group of identical digests in them.
    assert result["requests"] == 3 + sends["shared_batches"]
    assert {"claim_s", "plan_s", "assemble_s", "transport_s", "record_s"} <= set(result["stages_s"])
    assert set(result["cpu_s"]) == {"worker", "postgres", "standin", "redis"}
    assert 0 < result["worker_pss_total_mib"] <= result["worker_peak_rss_total_mib"]


def test_digest_benchmark_compares_with_the_fanout_of_the_same_run() -> None:
    # --fanout: the identical-digest figure beside the immediate fan-out measured in the same run.
    from benchmarks.digest import compare

    line = compare({"wall_s": 6.0}, {"n": 100_000, "wall_s": 4.0, "requests": 100, "missing": 0, "duplicated": 0})
    assert "N=100,000" in line and "wall=4.00s" in line and "digests / fan-out = 1.50" in line
    assert "no ratio" in compare({"wall_s": 6.0}, {"n": 10, "wall_s": None})
