"""Per-visit results of an HTTP benchmark run and the markdown table made from them."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from targets import Target


@dataclass(frozen=True)
class Visit:
    """One load run of one target in one round."""

    target: str
    round: int
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    # None when the target's processes are unknown (an external target without --target-pid).
    cpu_seconds: float | None
    elapsed_seconds: float
    # Responses outside 2xx and 3xx, also counted in `errors`.
    non_2xx: int = 0
    # CPU seconds of each root pid's process tree. They add up to `cpu_seconds`.
    cpu_seconds_by_root: dict[int, float] | None = None
    # Responses and non-2xx responses of the unmeasured warm-up run before this visit.
    warmup_requests: int = 0
    warmup_non_2xx: int = 0

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.cpu_seconds is None or self.requests == 0:
            return None
        return self.cpu_seconds * 1_000_000 / self.requests

    @property
    def cpu_percent(self) -> float | None:
        if self.cpu_seconds is None or self.elapsed_seconds == 0:
            return None
        return self.cpu_seconds * 100 / self.elapsed_seconds


def render_report(
    targets: list[Target], visits: list[Visit], ceilings: list[str], command: str, load: str
) -> str:
    """Render the run as markdown: command, date, machine, load settings and the table."""
    header = [
        "| target | server | req/s | req/s min-max | p50 ms | p99 ms "
        "| server CPU µs/req | server CPU % | errors |"
        + "".join(f" req/s ÷ {name} | CPU/req ÷ {name} |" for name in ceilings),
        "|---|---|--:|--:|--:|--:|--:|--:|--:|" + "--:|--:|" * len(ceilings),
    ]
    rows = [render_row(target, visits, ceilings) for target in targets]
    lines = [
        f"Command: `{command}`",
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: {describe_machine()}.",
        "",
        load,
        "",
        *header,
        *rows,
    ]
    return "\n".join(lines) + "\n"


def render_row(target: Target, visits: list[Visit], ceilings: list[str]) -> str:
    own = [visit for visit in visits if visit.target == target.name]
    if not own:
        return f"| {target.name} | {target.description} | failed |" + " |" * (6 + 2 * len(ceilings))

    rates = [visit.requests_per_second for visit in own]
    cells = [
        target.name,
        target.description,
        format_number(statistics.median(rates), 0),
        f"{min(rates):.0f}-{max(rates):.0f}",
        format_number(statistics.median(visit.p50_ms for visit in own), 2),
        format_number(statistics.median(visit.p99_ms for visit in own), 2),
        format_number(median_or_none([visit.cpu_us_per_request for visit in own]), 1),
        format_number(median_or_none([visit.cpu_percent for visit in own]), 0),
        str(sum(visit.errors for visit in own)),
    ]
    for ceiling in ceilings:
        cells.append(format_number(round_ratio(own, visits, ceiling, "rate"), 2))
        cells.append(format_number(round_ratio(own, visits, ceiling, "cpu"), 2))
    return "| " + " | ".join(cells) + " |"


def round_ratio(
    own: list[Visit], visits: list[Visit], ceiling: str, metric: Literal["rate", "cpu"]
) -> float | None:
    """Return the median over rounds of this target's metric divided by the ceiling's."""
    ceiling_by_round = {visit.round: visit for visit in visits if visit.target == ceiling}
    ratios: list[float | None] = []
    for visit in own:
        reference = ceiling_by_round.get(visit.round)
        if reference is None:
            continue
        if metric == "rate":
            ratios.append(visit.requests_per_second / reference.requests_per_second)
            continue
        cpu, reference_cpu = visit.cpu_us_per_request, reference.cpu_us_per_request
        ratios.append(None if cpu is None or not reference_cpu else cpu / reference_cpu)
    return median_or_none(ratios)


def median_or_none(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def format_number(value: float | None, decimals: int) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}"


def describe_machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    return (
        f"{cores} cores ({model}), Linux {platform.release()}, Python {platform.python_version()}"
    )
