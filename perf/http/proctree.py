"""CPU time of process trees, read from /proc (Linux only).

A benchmark target is several processes (a gunicorn master and its workers, an nginx master
and its workers, an echo shard), so its cost is the CPU time of every process in its tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessStat:
    """The fields of /proc/<pid>/stat that the benchmark needs."""

    parent_pid: int
    # utime + stime of all threads of the process, in clock ticks.
    cpu_ticks: int


def read_process_stat(pid: int) -> ProcessStat | None:
    """Read /proc/<pid>/stat, or return None when the process has exited."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None

    # The command name (field 2) is in parentheses and may contain spaces and ")" itself,
    # so the fixed fields start after the last ")". Field 4 is ppid, 14 utime, 15 stime.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcessStat(parent_pid=int(fields[1]), cpu_ticks=int(fields[11]) + int(fields[12]))


def read_all_stats() -> dict[int, ProcessStat]:
    stats: dict[int, ProcessStat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_process_stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    return stats


def snapshot_cpu_ticks(root_pids: list[int]) -> dict[int, int]:
    """Map each live process in the trees under `root_pids` (roots included) to its CPU ticks."""
    stats = read_all_stats()
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.parent_pid, []).append(pid)

    ticks: dict[int, int] = {}
    queue = [pid for pid in root_pids if pid in stats]
    while queue:
        pid = queue.pop()
        if pid not in ticks:
            ticks[pid] = stats[pid].cpu_ticks
            queue.extend(children.get(pid, []))
    return ticks


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """Return the CPU seconds the processes in `after` used since `before` was taken.

    A process that started in between counts from zero. NOTE: a process that exited in
    between is missing from `after`, so its CPU time is lost. A worker that gunicorn
    restarts during a run therefore makes the figure too low.
    """
    ticks = sum(after_ticks - before.get(pid, 0) for pid, after_ticks in after.items())
    return ticks / CLOCK_TICKS_PER_SECOND
