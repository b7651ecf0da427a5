"""The benchmark's figures, as pure functions of what a run recorded.

A run records (bench_autoscale.py):

- ``samples``: the sampler's timeline, one dict per tick:
  ``{"t": epoch, "pods": {name: "Pending"|"Running"|"Terminating"}, "queued": int|None, "running": int|None}``
  (``queued``: task instances scheduled or queued, i.e. waiting for a worker);
- ``pods``: ``{name: {"created": epoch}}``, every worker pod the sampler saw;
- ``tis``: one dict per submitted run: ``{"key", "burst", "state", "try_number",
  "queued", "start", "end" (epochs or None), "hostname"}``;
- ``t0`` (the first trigger), ``window_end`` (see pod_seconds) and ``floor``
  (the fleet size it should return to: the minimum, or None for a fixed fleet).
"""

from __future__ import annotations

import math

COUNTED = ("Running", "Terminating")  # what a worker pod costs: it holds its node's resources


def percentile(values, q):
    """Nearest-rank percentile (q in (0, 100]); None for no values."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(values)))
    return values[rank - 1]


def workers(sample, states=COUNTED):
    return sum(1 for s in sample["pods"].values() if s in states)


def pod_of(hostname):
    """The pod a task instance ran on: its hostname is the worker pod's name (maybe dotted)."""
    return hostname.split(".")[0] if hostname else None


def task_counts(tis):
    """submitted / succeeded / failed / killed-or-retried / lost.

    killed-or-retried: a task whose try failed or was retried (the workload's
    tasks only sleep: a failed try means its process or worker was killed).
    lost: a run whose task did not end in success (failed for good, or never
    finished before the run's deadline)."""
    return {
        "submitted": len(tis),
        "succeeded": sum(t["state"] == "success" for t in tis),
        "failed": sum(t["state"] in ("failed", "upstream_failed") for t in tis),
        "killed_or_retried": sum((t.get("try_number") or 1) > 1 or t["state"] in ("failed", "up_for_retry")
                                 for t in tis),
        "lost": sum(t["state"] != "success" for t in tis),
    }


def queue_waits(tis):
    """queued -> running, seconds, of each task that started."""
    return [t["start"] - t["queued"] for t in tis if t.get("start") is not None and t.get("queued") is not None]


def makespan(t0, tis):
    """First trigger -> last task end; None while a task has not ended."""
    ends = [t.get("end") for t in tis]
    if not ends or any(e is None for e in ends):
        return None
    return max(ends) - t0


def pod_seconds(samples, start, end, states=COUNTED):
    """Integral of the worker count (pods in ``states``) over [start, end].

    Sample-and-hold: each sample's count holds until the next sample; the last
    one holds until ``end`` (the common window of every mode: after the load
    is gone and the fleet is back at its floor nothing changes any more)."""
    total = 0.0
    samples = sorted(samples, key=lambda s: s["t"])
    for i, s in enumerate(samples):
        a = max(s["t"], start)
        b = min(samples[i + 1]["t"] if i + 1 < len(samples) else end, end)
        if b > a:
            total += workers(s, states) * (b - a)
    return total


def peak_workers(samples, states=COUNTED):
    return max((workers(s, states) for s in samples), default=0)


def burst_first_queued(tis):
    """{burst: the first queued time of its tasks}."""
    out = {}
    for t in tis:
        if t.get("queued") is not None:
            out[t["burst"]] = min(out.get(t["burst"], t["queued"]), t["queued"])
    return out


def scale_out_latencies(tis, pods):
    """{burst: seconds from its first queued task to the first task started on a
    worker pod created in its episode (after that moment, before the next
    burst's first queued task)} (None: no worker created then took a task).

    A pod belongs to the episode it was created in, whenever it takes its first
    task: a worker still starting when the next episode begins (grace's trickle
    starts 20 s after its burst) is that burst's scale-out, not nobody's."""
    firsts = burst_first_queued(tis)
    order = sorted(firsts.items(), key=lambda kv: kv[1])
    out = {}
    for i, (burst, tq) in enumerate(order):
        limit = order[i + 1][1] if i + 1 < len(order) else math.inf
        new = {name for name, p in pods.items() if p.get("created") is not None and tq < p["created"] < limit}
        starts = [t["start"] for t in tis
                  if t.get("start") is not None and t["start"] >= tq and pod_of(t.get("hostname")) in new]
        out[burst] = (min(starts) - tq) if starts else None
    return out


def scale_in_latency(samples, tis, floor):
    """Load gone (the last task ended) -> the fleet back at ``floor`` pods, the
    terminating ones gone too. Returns (seconds, censored): censored is True
    when the fleet was still above the floor at the last sample (seconds is
    then a lower bound). (None, False) for a fixed fleet or unfinished tasks."""
    ends = [t.get("end") for t in tis]
    if floor is None or not ends or any(e is None for e in ends):
        return None, False
    gone = max(ends)
    after = sorted((s for s in samples if s["t"] >= gone), key=lambda s: s["t"])
    for s in after:
        if workers(s, ("Pending",) + COUNTED) <= floor:
            return s["t"] - gone, False
    return ((after[-1]["t"] - gone) if after else 0.0), True


def summarize(run):
    """Every figure of one (mode, workload) run."""
    tis, samples = run["tis"], run["samples"]
    waits = queue_waits(tis)
    outs = scale_out_latencies(tis, run["pods"])
    scale_in, censored = scale_in_latency(samples, tis, run["floor"])
    summary = dict(task_counts(tis))
    summary.update({
        "wait_p50": percentile(waits, 50),
        "wait_p95": percentile(waits, 95),
        "makespan": makespan(run["t0"], tis),
        "pod_seconds": pod_seconds(samples, run["t0"], run["window_end"]),
        "peak_workers": peak_workers(samples),
        # The first burst's: every mode starts it from its floor.
        "scale_out": outs.get(0),
        "scale_out_by_burst": outs,
        "scale_in": scale_in,
        "scale_in_censored": censored,
    })
    return summary


RATIO_KEYS = ("wait_p95", "pod_seconds", "scale_out", "scale_in", "makespan")


def ratios(summaries, base="keda"):
    """{mode: {key: value / base's value}} (None where either is missing or the base is 0)."""
    ref = summaries.get(base)
    out = {}
    for mode, s in summaries.items():
        row = {}
        for k in RATIO_KEYS:
            a, b = s.get(k), (ref or {}).get(k)
            row[k] = (a / b) if a is not None and b not in (None, 0) else None
        out[mode] = row
    return out


POD_SECONDS_SHARE = 0.8


def target_checks(summaries, workload):
    """The issue's targets as (name, value, limit) for Targets.at_most, and the
    names of targets that could not be checked (a figure is missing): those
    count as missed. Comparisons against KEDA are left out when KEDA did not
    run (listed in the third value)."""
    checks, unmeasured, skipped = [], [], []
    el, keda = summaries.get("elastic"), summaries.get("keda")
    if el is None:
        return checks, unmeasured, ["%s: elastic did not run" % workload]
    checks.append(("%s elastic lost" % workload, el["lost"], 0))
    checks.append(("%s elastic killed-or-retried" % workload, el["killed_or_retried"], 0))
    if keda is None:
        skipped.append("%s: comparisons with KEDA (KEDA did not run)" % workload)
        return checks, unmeasured, skipped
    for key, label, share in (("wait_p95", "queue wait p95 <= KEDA's", 1.0),
                              ("pod_seconds", "pod-seconds <= 0.8 x KEDA's", POD_SECONDS_SHARE),
                              ("scale_out", "scale-out latency <= KEDA's", 1.0)):
        name = "%s elastic %s" % (workload, label)
        if el.get(key) is None or keda.get(key) is None:
            unmeasured.append("%s (elastic %s, KEDA %s)" % (name, el.get(key), keda.get(key)))
        else:
            checks.append((name, el[key], share * keda[key]))
    return checks, unmeasured, skipped
