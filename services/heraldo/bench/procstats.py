"""What a process cost: peak resident memory and CPU seconds, read from Linux's ``/proc``."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    #: ``VmHWM``: the most resident memory the process has held since it started.
    peak_rss_kb: int
    #: User plus system CPU since the process started.
    cpu_s: float


def sample(pid: int) -> ProcessSample | None:
    """The process's figures now; None when it has gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            peak_kb = next((int(line.split()[1]) for line in status
                            if line.startswith("VmHWM:")), 0)
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The command name may hold spaces and parentheses: the fields start after the last ")".
            fields = stat.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # utime and stime are fields 14 and 15 of stat(5); fields here start at field 3.
    ticks = int(fields[11]) + int(fields[12])
    return ProcessSample(pid=pid, peak_rss_kb=peak_kb, cpu_s=ticks / CLOCK_TICKS_PER_S)


def sample_all(pids: dict[str, int]) -> dict[str, ProcessSample]:
    """Figures of the named processes still running."""
    found = {}
    for name, pid in pids.items():
        taken = sample(pid)
        if taken is not None:
            found[name] = taken
    return found


def cpu_used(before: dict[str, ProcessSample], after: dict[str, ProcessSample]
             ) -> dict[str, float]:
    """CPU seconds each process spent between two samples; one started in between counts whole
    (a PostgreSQL backend opened during a run)."""
    return {name: round(taken.cpu_s - (before[name].cpu_s if name in before else 0.0), 3)
            for name, taken in after.items()}


@dataclass(frozen=True)
class MachineSample:
    #: Clock ticks of all CPUs since boot: busy (user, system, interrupts, steal) and in total.
    busy_ticks: int
    total_ticks: int


def sample_machine() -> MachineSample:
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already within user).
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return MachineSample(busy_ticks=total - idle, total_ticks=total)


def busy_percent(before: MachineSample, after: MachineSample) -> float | None:
    """How busy all the machine's CPUs were between two samples: near 100 means CPU-bound."""
    total = after.total_ticks - before.total_ticks
    if total <= 0:
        return None
    return round(100 * (after.busy_ticks - before.busy_ticks) / total, 1)


def pids_named(command: str) -> dict[str, int]:
    """Every process whose command name is ``command`` (``postgres``: the server's processes)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="ascii", errors="replace") as comm:
                if comm.read().strip() == command:
                    found[f"{command}-{entry}"] = int(entry)
        except OSError:
            continue
    return found
