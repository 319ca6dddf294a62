"""``python -m tests.robustness [--seed N] [--steps N] [--minutes M] [--keep-going] [--mutant M]``: one run
(see driver.py).

Without ``--seed`` a random seed is drawn and printed first, so any run can be replayed. ``--minutes`` makes it a
soak: operations keep coming for that long, and the report adds RSS over time (slope per process), log lines and
Events per minute and CloudSigma calls per minute. A failing run prints the seed, the invariant, the Node, the last
operations and the whole schedule, and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys

from tests.robustness.driver import Budget, Report, RunFailed, rss_slope, run
from tests.robustness.mutants import MUTANTS
from tests.robustness.schedule import generate


def soak_figures(report: Report) -> list[str]:
    minutes = max(report.seconds / 60, 1e-6)
    lines = [f"log lines/min {report.log_lines / minutes:.0f}; Events/min {report.events / minutes:.1f}; "
             f"CloudSigma calls/min at rest {report.rest_per_min:.0f} "
             f"(before the faults {report.baseline_per_min:.0f})"]
    lives = [samples for samples in report.rss.values() if samples]
    if lives:
        longest_life = max(s[-1][0] - s[0][0] for s in lives)
        lines.append(f"{len(lives)} process lives (kill_leader restarts them), the longest {longest_life / 60:.1f} "
                     f"min; RSS {min(s[0][1] for s in lives):.1f}-{max(m for s in lives for _, m in s):.1f} MiB "
                     f"over the whole run")
    longest = sorted(report.rss.items(), key=lambda kv: -(kv[1][-1][0] - kv[1][0][0]) if kv[1] else 0)
    for process, samples in longest[:4]:
        span = samples[-1][0] - samples[0][0] if samples else 0.0
        lines.append(f"RSS {process}: {samples[0][1]:.1f} -> {samples[-1][1]:.1f} MiB over {span / 60:.1f} min, "
                     f"slope {rss_slope(samples):+.2f} MiB/h")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.robustness")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=0.0, help="soak: run operations for this long")
    parser.add_argument("--mutant", default="", choices=["", *MUTANTS],
                        help="run the daemon with an old bug put back (tests/robustness/mutants.py)")
    parser.add_argument("--keep-going", action="store_true",
                        help="note each violation and go on (a soak's figures); still exits 1 listing them all")
    parser.add_argument("--print-schedule", action="store_true", help="print the schedule of --seed and exit")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    if args.print_schedule:
        print("\n".join(op.describe() for op in generate(seed, args.steps)))
        return 0
    print(f"robustness run, seed {seed}" + (f", mutant {args.mutant}" if args.mutant else ""), flush=True)
    budget = Budget(steps=args.steps, duration=args.minutes * 60, rest_window=30.0 if args.minutes else 15.0,
                    keep_going=args.keep_going)
    try:
        report = asyncio.run(run(seed, budget, mutant=args.mutant, progress=lambda line: print(line, flush=True)))
    except RunFailed as exc:
        print(str(exc), flush=True)
        if args.minutes and exc.report is not None:
            print(exc.report.summary())
            print("\n".join(soak_figures(exc.report)))
        return 1
    print(report.summary())
    if args.minutes:
        print("\n".join(soak_figures(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
