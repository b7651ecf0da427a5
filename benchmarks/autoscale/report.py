"""The benchmark's output: the table for docs/performance.md, the ratios
against KEDA and the plot (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

import statistics

BEGIN = "<!-- bench-autoscale:begin (written by make bench-autoscale) -->"
END = "<!-- bench-autoscale:end -->"

COLUMNS = [
    ("submitted", "submitted", "%d"),
    ("succeeded", "succeeded", "%d"),
    ("failed", "failed", "%d"),
    ("killed_or_retried", "killed or retried", "%d"),
    ("lost", "lost", "%d"),
    ("wait_p50", "queue wait p50 (s)", "%.1f"),
    ("wait_p95", "queue wait p95 (s)", "%.1f"),
    ("makespan", "makespan (s)", "%.0f"),
    ("pod_seconds", "worker pod-seconds", "%.0f"),
    ("peak_workers", "peak workers", "%d"),
    ("scale_out", "scale-out latency (s)", "%.1f"),
    ("scale_in", "scale-in latency (s)", "%.0f"),
]
NUMERIC = [c[0] for c in COLUMNS]


def fmt(value, pattern, censored=False):
    if value is None:
        return "n/a"
    return (">= " if censored else "") + pattern % value


def aggregate(summaries):
    """The median of each figure over repetitions (a list of summaries of one
    mode and workload); a figure missing in any repetition is missing."""
    out = {}
    for key in NUMERIC:
        values = [s.get(key) for s in summaries]
        out[key] = None if not values or any(v is None for v in values) else statistics.median(values)
    out["scale_in_censored"] = any(s.get("scale_in_censored") for s in summaries)
    return out


def table(workload, by_mode):
    """A markdown table: one row per mode."""
    head = "| mode | " + " | ".join(c[1] for c in COLUMNS) + " |"
    rows = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for mode, s in by_mode.items():
        cells = [fmt(s.get(k), p, k == "scale_in" and s.get("scale_in_censored")) for k, _, p in COLUMNS]
        rows.append("| %s | %s |" % (mode, " | ".join(cells)))
    return "**%s**\n\n%s" % (workload, "\n".join(rows))


def ratio_table(workload, ratios):
    keys = [("wait_p95", "queue wait p95"), ("pod_seconds", "pod-seconds"), ("scale_out", "scale-out latency"),
            ("scale_in", "scale-in latency"), ("makespan", "makespan")]
    rows = ["| mode | " + " | ".join(k[1] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for mode, r in ratios.items():
        rows.append("| %s | %s |" % (mode, " | ".join(fmt(r.get(k), "%.2f") for k, _ in keys)))
    return "**%s, ratio to KEDA**\n\n%s" % (workload, "\n".join(rows))


def section(header_lines, tables, targets_lines, plot_name):
    parts = [BEGIN, ""] + header_lines + [""]
    for t in tables:
        parts += [t, ""]
    parts += ["Targets:", ""] + ["    " + line for line in targets_lines] + [""]
    if plot_name:
        parts += ["![workers and queue length over time, one panel per mode](%s)" % plot_name, ""]
    parts.append(END)
    return "\n".join(parts)


def replace_section(text, new_section):
    """``text`` with its bench-autoscale section replaced (appended if it has none)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + new_section + tail
    return text.rstrip("\n") + "\n\n" + new_section + "\n"


def timeline(samples, t0):
    """(seconds since t0, workers Running+Terminating, of them Terminating, queue length) per sample."""
    out = []
    for s in sorted(samples, key=lambda s: s["t"]):
        states = list(s["pods"].values())
        counted = sum(st in ("Running", "Terminating") for st in states)
        out.append((s["t"] - t0, counted, sum(st == "Terminating" for st in states), s.get("queued")))
    return out


def plot(path, runs, modes, workloads, title):
    """One panel per mode (rows) and workload (columns): workers (Running +
    Terminating, Terminating shaded) and queue length over time. ``runs`` maps
    (mode, workload) to a recorded run (samples, t0)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(modes), len(workloads), figsize=(6.5 * len(workloads), 2.4 * len(modes)),
                             squeeze=False, sharex="col")
    for i, mode in enumerate(modes):
        for j, wl in enumerate(workloads):
            ax = axes[i][j]
            run = runs.get((mode, wl))
            ax.set_title("%s: %s" % (mode, wl), fontsize=9)
            if not run or not run["samples"]:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
                continue
            tl = timeline(run["samples"], run["t0"])
            t = [p[0] for p in tl]
            ax.step(t, [p[1] for p in tl], where="post", label="workers (Running + Terminating)", color="tab:blue")
            ax.fill_between(t, 0, [p[2] for p in tl], step="post", alpha=0.3, color="tab:red", label="Terminating")
            ax.step(t, [p[3] if p[3] is not None else float("nan") for p in tl], where="post",
                    label="queue length (scheduled + queued)", color="tab:orange")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if i == len(modes) - 1:
                ax.set_xlabel("seconds since the first trigger")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
