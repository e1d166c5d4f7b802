"""The provider misbehaves: 20% of requests answered 429 or 500, 2% time out (and are accepted anyway).

The stand-in draws a fault per request (seeded): 10% ``429`` with ``Retry-After: 1``, 10% ``500``, 2% a
"timeout" - it sleeps past the client's timeout (3 s against ``ALERTS_SENDGRID_TIMEOUT_S=2``) and then
*accepts* the request, the worst case: the service has to retry without knowing the email went out. The
first three requests of a run are always a timeout, a 429 and a 500, so every path is exercised in every run.

Guarantee: every recipient gets the email; a recipient may get one extra email per retry the service flagged
as ambiguous (``deliveries.ambiguous_retries``), and no other. Those are reported as ``ambiguous_dups``.
Batches are 250 recipients (100 with ``--fast``) so that a run makes enough requests to meet every fault.
"""

from __future__ import annotations

import sys

from chaos.harness import Harness, Options, Result, parser, report, resolve

FULL_N, FAST_N = 20_000, 2_000


def run(
    n: int, fast: bool, seed: int, rate_error: float = 0.2, rate_timeout: float = 0.02, timeout_s: float | None = None
) -> Result:
    options = Options(
        "provider_faults",
        n,
        fast,
        seed,
        batch_size=100 if fast else 250,
        concurrency=4,  # requests wait on the provider, not on the CPU
        standin_args=[
            "--rate-429",
            str(rate_error / 2),
            "--rate-500",
            str(rate_error / 2),
            "--rate-timeout",
            str(rate_timeout),
            "--timeout-delay",
            "3",
            "--retry-after",
            "1",
        ],
        settle_timeout_s=timeout_s or (90 if fast else 300),
    )
    with Harness(options) as h:
        # The first three requests meet each fault for sure; the rest are drawn.
        h.standin.fail_next(1, "timeout")
        h.standin.fail_next(1, 429, retry_after_s=1)
        h.standin.fail_next(1, 500)
        h.forced_timeouts = 1
        h.start_services()
        h.publish()
        result = h.finish({"seed": seed})
        stats = h.standin.stats()
        by_status = stats["responses_by_status"]
        result.extra = {
            "requests": stats["requests_total"],
            "r429": by_status.get("429", 0),
            "r500": by_status.get("500", 0),
            "ambiguous_retries": result.ambiguous_retries,
            **result.extra,
        }
        if result.ambiguous_timeouts and not result.ambiguous_retries:
            result.problems.append("the stand-in accepted timed-out requests but no delivery was flagged ambiguous")
        return result


def main(argv: list[str] | None = None) -> int:
    p = parser("provider_faults", __doc__.splitlines()[0], FULL_N, FAST_N)
    p.add_argument("--rate-error", type=float, default=0.2, help="share of requests answered 429 or 500 (half each)")
    p.add_argument("--rate-timeout", type=float, default=0.02, help="share of requests that time out (accepted)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the end condition")
    args = p.parse_args(argv)
    n, seed = resolve(args, FULL_N, FAST_N)
    return report(run(n, args.fast, seed, args.rate_error, args.rate_timeout, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
