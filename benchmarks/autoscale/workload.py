"""The seeded workloads of the autoscaling benchmark: pure functions from a
seed to a schedule of DAG runs, the same for every mode.

Fixed before the first measurement (issue 17). A change to SEED, to a
constant below or to the drawing code changes every schedule: record it in
the CHANGELOG with its reason (tests/unit/test_bench_autoscale.py pins the
schedules of SEED, so such a change cannot go unnoticed).

Each submission is one run of the e2e DAG ``e2e_sleep_append`` (one task that
sleeps ``seconds`` and then appends a line to a results file).
"""

from __future__ import annotations

import dataclasses
import random

SEED = 20261217

# Task durations (seconds), as the issue asks: short 10-30 s, long 60-180 s.
SHORT = (10, 30)
LONG = (60, 180)

# "bursts": BURSTS bursts of BURST_SIZE runs each, submitted within
# BURST_SPREAD s, LONG_SHARE of them long; the next burst starts IDLE_GAP s
# after the burst's short tasks would end on a fleet with a free slot for
# each, so only its long tasks (if any) still run: a low load for long enough
# that an autoscaler can scale in (the ElasticWorker's defaults when it was fixed: 30 s back-off,
# 10 s poll).
BURSTS = 3
BURST_SIZE = (5, 8)
BURST_SPREAD = 5.0
LONG_SHARE = 0.25
IDLE_GAP = (60.0, 90.0)

# "grace": run with a 60 s termination grace period in every mode. A burst of
# GRACE_BURST short runs scales the fleet out; then a trickle of TRICKLE long
# runs, one every TRICKLE_EVERY s, keeps a low load on whatever workers take
# them, past the point where an autoscaler scales in (KEDA's HPA: its default
# 300 s scale-down stabilization). A worker removed while it runs one of
# them has more than the 60 s grace left on it.
GRACE_BURST = 6
TRICKLE = 8
TRICKLE_START = 20.0
TRICKLE_EVERY = (35.0, 50.0)


@dataclasses.dataclass(frozen=True)
class Submission:
    at: float       # seconds after the workload's start when the run is triggered
    key: str        # unique within the workload: part of the DAG run id
    seconds: int    # how long its task sleeps
    kind: str       # "short" or "long"
    burst: int      # the episode it belongs to (scale-out latency is per episode)


def _duration(rng: random.Random, long: bool) -> tuple[int, str]:
    low, high = LONG if long else SHORT
    return rng.randint(low, high), ("long" if long else "short")


def bursts(seed: int = SEED) -> tuple[Submission, ...]:
    rng = random.Random(seed)
    out = []
    start = 0.0
    for b in range(BURSTS):
        size = rng.randint(*BURST_SIZE)
        short_end = start
        for i in range(size):
            at = round(start + rng.uniform(0, BURST_SPREAD), 1)
            seconds, kind = _duration(rng, rng.random() < LONG_SHARE)
            out.append(Submission(at, "b%d-%02d" % (b, i), seconds, kind, b))
            if kind == "short":
                short_end = max(short_end, at + seconds)
        start = round(short_end + rng.uniform(*IDLE_GAP), 1)
    return tuple(sorted(out, key=lambda s: (s.at, s.key)))


def grace(seed: int = SEED) -> tuple[Submission, ...]:
    rng = random.Random(seed + 1)
    out = []
    for i in range(GRACE_BURST):
        seconds, kind = _duration(rng, False)
        out.append(Submission(round(rng.uniform(0, BURST_SPREAD), 1), "g0-%02d" % i, seconds, kind, 0))
    at = TRICKLE_START
    for i in range(TRICKLE):
        seconds, kind = _duration(rng, True)
        out.append(Submission(round(at, 1), "t1-%02d" % i, seconds, kind, 1))
        at += rng.uniform(*TRICKLE_EVERY)
    return tuple(sorted(out, key=lambda s: (s.at, s.key)))


WORKLOADS = {"bursts": bursts, "grace": grace}


def schedule(name: str, seed: int = SEED) -> tuple[Submission, ...]:
    return WORKLOADS[name](seed)


def planned_end(subs) -> float:
    """When the last task would end if every run started at once."""
    return max(s.at + s.seconds for s in subs)


def describe(name: str, subs) -> str:
    """The schedule as text (--dry-run prints it)."""
    lines = ["workload %s: %d runs (%d short, %d long), planned end %.0f s"
             % (name, len(subs), sum(s.kind == "short" for s in subs), sum(s.kind == "long" for s in subs),
                planned_end(subs))]
    lines += ["  t=%6.1f s  %-6s burst %d  %-5s %3d s" % (s.at, s.key, s.burst, s.kind, s.seconds) for s in subs]
    return "\n".join(lines)
