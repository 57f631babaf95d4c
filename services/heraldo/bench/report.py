"""The benchmark's results: medians over runs, ratios, the targets, the JSON file and the plots."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

from heraldo.bench.measure import RunResult

logger = logging.getLogger(__name__)

SYSTEMS = ("heraldo", "baseline", "lean-baseline", "ceiling")
#: The ratios reported for each workload: Heraldo's rate over each other system's.
RATIOS = {"heraldo_over_baseline": "baseline", "heraldo_over_lean_baseline": "lean-baseline",
          "heraldo_over_ceiling": "ceiling"}
#: What users asked for; reported beside the figures, never enforced.
TARGET_PER_SECOND = 2500.0
TARGET_BASELINE_RATIO = 3.0
TARGET_PEAK_RSS_MB = 200.0
TARGET_RSS_GROWTH = 0.10
TARGET_FIRST_EMAIL_S = 1.0
#: How each kind of figure a target measures is printed.
MEASURED_FORMATS = {"per_second": "{:,.0f}/s", "ratio": "{:.2f}x", "seconds": "{:.3f} s",
                    "megabytes": "{:.1f} MB", "growth": "{:+.1%}"}
VERDICTS = {True: "met", False: "MISSED", None: "n/a"}


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 4) if present else None


def summarise(runs: list[RunResult]) -> dict:
    """Per system: medians over its runs; peak memory is the highest of any run."""
    summary = {}
    for system in SYSTEMS:
        mine = [run for run in runs if run.system == system]
        if not mine:
            continue
        peak: dict[str, float] = {}
        for run in mine:
            for name, megabytes in run.peak_rss_mb.items():
                peak[name] = max(peak.get(name, 0.0), megabytes)
        cpu_names = sorted({name for run in mine for name in run.cpu_s})
        # The median is taken of the figures listed beside it, so the two print alike.
        rates = [round(run.per_second, 4) for run in mine]
        summary[system] = {
            "runs": len(mine),
            "sent": _median([run.sent for run in mine]),
            "per_second": _median(rates),
            "per_second_runs": rates,
            "load_average_1m_runs": [run.load_average_1m for run in mine],
            "machine_busy_percent": _median([run.machine_busy_percent for run in mine]),
            "first_email_s": _median([run.first_email_s for run in mine]),
            "latency_p50_s": _median([run.latency_p50_s for run in mine]),
            "latency_p99_s": _median([run.latency_p99_s for run in mine]),
            "latency_upper_p50_s": _median([run.latency_upper_p50_s for run in mine]),
            "latency_upper_p99_s": _median([run.latency_upper_p99_s for run in mine]),
            "cpu_s_per_1000": _median([run.cpu_s_per_1000 for run in mine]),
            "cpu_s_per_1000_by_process": {
                name: _median([1000 * run.cpu_s[name] / run.sent for run in mine
                               if name in run.cpu_s and run.sent])
                for name in cpu_names},
            "peak_rss_mb": peak,
        }
    heraldo = summary.get("heraldo", {}).get("per_second")
    for ratio, system in RATIOS.items():
        other = summary.get(system, {}).get("per_second")
        if heraldo and other:
            summary[ratio] = round(heraldo / other, 3 if system == "ceiling" else 2)
    return summary


def targets(summaries: dict[str, dict]) -> list[dict]:
    """Each target with the measured figure and whether it was met."""
    checks = []

    def check(name: str, measured, met: bool, unit: str) -> None:
        # A figure that was not measured (a system left out with --systems) meets nothing.
        checks.append({"target": name, "measured": measured, "unit": unit,
                       "met": None if measured is None else met})

    for workload, summary in summaries.items():
        heraldo = summary.get("heraldo", {})
        if workload == "retail":
            rate = heraldo.get("per_second")
            check(">= 2,500 notifications/s end to end on the Online Retail job", rate,
                  rate is not None and rate >= TARGET_PER_SECOND, "per_second")
        ratio = summary.get("heraldo_over_baseline")
        check(f">= 3x the baseline ({workload})", ratio,
              ratio is not None and ratio >= TARGET_BASELINE_RATIO, "ratio")
        first = heraldo.get("first_email_s")
        check(f"time to first email < 1 s ({workload})", first,
              first is not None and first < TARGET_FIRST_EMAIL_S, "seconds")
        for name, megabytes in sorted(heraldo.get("peak_rss_mb", {}).items()):
            if name.startswith(("batch", "notifier")):
                check(f"peak RSS of {name} < 200 MB ({workload})", megabytes,
                      megabytes < TARGET_PEAK_RSS_MB, "megabytes")
    if {"retail", "synthetic"} <= set(summaries):
        small = summaries["retail"].get("heraldo", {}).get("peak_rss_mb", {})
        large = summaries["synthetic"].get("heraldo", {}).get("peak_rss_mb", {})
        for name in sorted(set(small) & set(large)):
            if name.startswith(("batch", "notifier")) and small[name]:
                growth = round(large[name] / small[name] - 1, 3)
                check(f"peak RSS of {name} within 10% between the 22k and 250k runs", growth,
                      abs(growth) <= TARGET_RSS_GROWTH, "growth")
    return checks


def target_line(check: dict) -> str:
    """One target for the terminal: the verdict, the target and the figure, rounded to its kind."""
    measured = check["measured"]
    shown = ("not measured" if measured is None
             else MEASURED_FORMATS.get(check.get("unit"), "{}").format(measured))
    return f"target {VERDICTS[check['met']]:6s} {check['target']}: {shown}"


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")


def rates(samples: list[tuple[float, int]]) -> tuple[list[float], list[float]]:
    """Messages per second between consecutive samples, placed at the end of each interval."""
    times, per_second = [], []
    for (t0, n0), (t1, n1) in zip(samples, samples[1:], strict=False):
        if t1 > t0:
            times.append(t1)
            per_second.append((n1 - n0) / (t1 - t0))
    return times, per_second


def plot(path: Path, workload: str, runs: list[RunResult]) -> Path | None:
    """Throughput over time, one line per run, one panel per system. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is missing (pip install -e '.[bench]'): no plot for %s",
                       workload)
        return None
    systems = [system for system in SYSTEMS if any(run.system == system for run in runs)]
    figure, axes = plt.subplots(len(systems), 1, figsize=(10, 3.2 * len(systems)), squeeze=False)
    for axis, system in zip(axes[:, 0], systems, strict=True):
        highest = 0.0
        for run in (run for run in runs if run.system == system):
            times, per_second = rates(run.samples)
            highest = max([highest, *per_second])
            axis.plot(times, per_second, marker="o" if len(times) < 5 else None,
                      label=f"run {run.run}: {run.per_second:,.0f}/s overall")
        # From zero, each panel on its own scale (the systems' rates differ fifty-fold), with
        # the margin above the highest point that autoscaling would have left.
        axis.set_ylim(0, highest * 1.05 or 1.0)
        axis.set_title(f"{system} ({workload})")
        axis.set_xlabel("seconds since start")
        axis.set_ylabel("emails/s at the sink")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def table(summaries: dict[str, dict]) -> str:
    """A few readable lines per workload for the terminal."""
    lines = []
    for workload, summary in summaries.items():
        lines.append(f"{workload}:")
        for system in SYSTEMS:
            figures = summary.get(system)
            if not figures:
                continue
            lines.append(
                f"  {system:13s} {figures['per_second'] or 0:8,.0f}/s (runs "
                f"{', '.join(f'{rate:,.0f}' for rate in figures['per_second_runs'])})"
                f"  first email {_seconds(figures['first_email_s'])}"
                f"  latency p50 {_seconds(figures['latency_p50_s'])}"
                f" p99 {_seconds(figures['latency_p99_s'])}"
                f"  CPU ms/email {_cpu_ms(figures)}"
                f"  machine busy {_percent(figures.get('machine_busy_percent'))}"
                f"  load {max(figures['load_average_1m_runs']):.1f}")
            if figures["peak_rss_mb"]:
                lines.append("            peak RSS MB: " + ", ".join(
                    f"{name} {megabytes:.0f}"
                    for name, megabytes in sorted(figures["peak_rss_mb"].items())))
        for ratio in RATIOS:
            if ratio in summary:
                lines.append(f"  {ratio.replace('_', ' ')}: {summary[ratio]}")
    return "\n".join(lines)


def _cpu_ms(figures: dict) -> str:
    """CPU ms per email of the system, then of PostgreSQL where it was measured."""
    own = figures["cpu_s_per_1000"]
    shown = "-" if own is None else f"{own:.3f}"
    postgres = figures["cpu_s_per_1000_by_process"].get("postgres")
    return shown if postgres is None else f"{shown} (+ PostgreSQL {postgres:.3f})"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"
