"""``python -m chaos [--fast] [--only NAME ...]``: every scenario in turn, each in its own process.

Prints each scenario's summary line as it finishes, then all of them again; exits 1 if any scenario's
guarantees did not hold. ``make chaos`` runs this (the full scenarios).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from chaos.harness import REPO

SCENARIOS = ["kill_worker", "redis_restart", "provider_faults", "postgres_restart", "duplicate_publish"]
# Extra runs of the full suite: (scenario, arguments). A graceful restart (deploy) must not send anything twice.
EXTRA_RUNS = [("kill_worker", ["--mode", "term"])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="the small variants (as in make test)")
    p.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these")
    args = p.parse_args(argv)
    lines: list[str] = []
    failed: list[str] = []
    started = time.monotonic()
    runs: list[tuple[str, list[str]]] = [(name, []) for name in args.only or SCENARIOS]
    if not args.only and not args.fast:
        runs += EXTRA_RUNS
    for name, extra in runs:
        command = [sys.executable, "-m", f"chaos.{name}", *extra, *(["--fast"] if args.fast else [])]
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
        out = done.stdout.strip().splitlines()
        line = out[-1] if out else f"{name}: no summary (exit code {done.returncode})"
        print(line, flush=True)
        lines.append(line)
        if done.returncode != 0:
            failed.append(name)
    print(
        f"\nchaos: {len(lines)} scenarios in {time.monotonic() - started:.0f}s, failed: {', '.join(failed) or 'none'}"
    )
    for line in lines:
        print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
