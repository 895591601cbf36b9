"""CPU time and memory of the current process, under OpenTelemetry's `process.*` names."""

from __future__ import annotations

import os
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def register_process_metrics(meter: Meter) -> None:
    meter.create_observable_counter(
        "process.cpu.time",
        [_cpu_time],
        unit="s",
        description="CPU time used by the process, by mode (user, system).",
    )
    meter.create_observable_up_down_counter(
        "process.memory.usage",
        [_memory_usage],
        unit="By",
        description="Resident memory of the process (RSS).",
    )
    meter.create_observable_up_down_counter(
        "process.memory.virtual",
        [_memory_virtual],
        unit="By",
        description="Virtual memory of the process.",
    )


def _cpu_time(options: CallbackOptions) -> Iterable[Observation]:
    times = os.times()
    return [
        Observation(times.user, {"cpu.mode": "user"}),
        Observation(times.system, {"cpu.mode": "system"}),
    ]


def _statm() -> tuple[int, int] | None:
    """Return (virtual, resident) bytes from /proc, or None where /proc is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            fields = statm.read().split()
    except OSError:
        return None
    return int(fields[0]) * _PAGE_SIZE, int(fields[1]) * _PAGE_SIZE


def _memory_usage(options: CallbackOptions) -> Iterable[Observation]:
    sizes = _statm()
    return [] if sizes is None else [Observation(sizes[1])]


def _memory_virtual(options: CallbackOptions) -> Iterable[Observation]:
    sizes = _statm()
    return [] if sizes is None else [Observation(sizes[0])]
