"""Run the standard benchmark set and rewrite its table in docs/benchmarks.md.

The set: durable ping throughput against bare Falcon and nginx in the same run (needs
Debian's wrk and nginx), detection latency, deadline-to-webhook latency, and a soak.

`make bench` runs this. Each benchmark runs as its own process, one after the other, so
they never compete for the two cores. The table between the `bench:begin` and
`bench:end` markers of docs/benchmarks.md is replaced, and the rest of the page is kept.
With --only, the rows of the benchmarks that did not run stay as they were, each with
the time of its own run.

Usage: python perf/bench_all.py [--quick] [--only NAME ...] [--json-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

Row = tuple[str, str, str, str]
"""(figure, result, ceiling or target, ratio)."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    command: list[str]
    quick: list[str]
    rows: Callable[[dict[str, Any]], list[Row]]


def _ping_rows(data: dict[str, Any]) -> list[Row]:
    throughput = data["throughput"]
    real = throughput.get("real", {})
    rows: list[Row] = [
        (
            "durable pings/s (100,000 checks, 4 shards)",
            f"{real.get('req_per_s')}/s",
            f"bare Falcon {throughput.get('bare-uvicorn', {}).get('req_per_s')}/s; "
            ">= 50% and >= 5,000/s",
            f"{real.get('rate_ratio_to_bare-uvicorn')} of bare Falcon",
        ),
        (
            "same, against nginx return 200",
            f"{real.get('req_per_s')}/s",
            f"nginx {throughput.get('nginx', {}).get('req_per_s')}/s",
            f"{real.get('rate_ratio_to_nginx')}",
        ),
        (
            "same, against bare Falcon with one echo round trip per request",
            f"{real.get('req_per_s')}/s",
            f"echo round trip {throughput.get('roundtrip-uvicorn', {}).get('req_per_s')}/s",
            f"{real.get('rate_ratio_to_roundtrip-uvicorn')}",
        ),
        ("ping p50 / p99", f"{real.get('p50_ms')} / {real.get('p99_ms')} ms", "", ""),
    ]
    return rows


def _detection_rows(data: dict[str, Any]) -> list[Row]:
    steady, burst = data["steady"], data["burst"]
    per_check = data.get("shard_bytes_per_check")
    return [
        (
            "detection latency, steady p50 / p99 / max",
            f"{steady.get('p50_ms')} / {steady.get('p99_ms')} / {steady.get('max_ms')} ms",
            "p99 < 50 ms, max < 250 ms",
            _ratio(steady.get("p99_ms"), 50.0),
        ),
        (
            "detection latency, burst p50 / p99 / max",
            f"{burst.get('p50_ms')} / {burst.get('p99_ms')} / {burst.get('max_ms')} ms",
            "",
            "",
        ),
        ("shard load time", f"{max(data.get('shard_load_s') or [0])} s", "< 5 s at 250k", ""),
        (
            "shard RSS per check, net of an empty shard",
            f"{per_check} B",
            "< 600 B",
            _ratio(per_check, 600.0),
        ),
    ]


def _alert_rows(data: dict[str, Any]) -> list[Row]:
    steady = data["steady"]
    outside = data.get("steady_outside_burst", {})
    return [
        (
            "deadline to webhook, steady p50 / p99 / max (burst included)",
            f"{steady.get('p50_ms')} / {steady.get('p99_ms')} / {steady.get('max_ms')} ms",
            "",
            "",
        ),
        (
            "deadline to webhook, steady outside the burst, p50 / p99 / max",
            f"{outside.get('p50_ms')} / {outside.get('p99_ms')} / {outside.get('max_ms')} ms",
            "p99 < 100 ms",
            _ratio(outside.get("p99_ms"), 100.0),
        ),
        (
            "burst fully delivered after",
            f"{data.get('burst_complete_after_s')} s",
            "< 10 s",
            _ratio(data.get("burst_complete_after_s"), 10.0),
        ),
    ]


def _soak_rows(data: dict[str, Any]) -> list[Row]:
    worst = max(data["growth_mib"].values(), default=0.0)
    return [
        (
            f"soak {int(data['duration_s'])} s at {data['rate']:g}/s, worst RSS growth",
            f"{worst} MiB ({data['failed']} failed of {data['sent']})",
            f"<= {data['bound_mib']} MiB",
            _ratio(worst, data["bound_mib"]),
        ),
    ]


def _ratio(value: Any, reference: float) -> str:
    if not isinstance(value, int | float) or reference == 0:
        return ""
    return f"{value / reference:.2f}x"


BENCHMARKS = [
    Benchmark(
        "pings",
        ["perf/bench_pings.py"],
        ["perf/bench_pings.py", "--checks", "20000", "--rounds", "1", "--duration", "5"],
        _ping_rows,
    ),
    Benchmark(
        "detection",
        ["perf/bench_detection.py", "--checks", "100000", "--shards", "4", "--rate", "2000"],
        [
            "perf/bench_detection.py",
            "--checks",
            "20000",
            "--due",
            "2000",
            "--burst",
            "2000",
            "--window",
            "10",
            "--rate",
            "500",
        ],
        _detection_rows,
    ),
    Benchmark(
        "alerts",
        ["perf/bench_alert_latency.py", "--checks", "100000", "--due", "5000", "--burst", "10000"],
        [
            "perf/bench_alert_latency.py",
            "--checks",
            "20000",
            "--due",
            "1000",
            "--burst",
            "2000",
            "--window",
            "10",
            "--drain",
            "10",
            "--startup-margin",
            "25",
        ],
        _alert_rows,
    ),
    Benchmark(
        "soak",
        ["perf/soak.py", "--duration", "3600", "--rate", "500"],
        ["perf/soak.py", "--duration", "120", "--rate", "300", "--sample", "20", "--warmup", "40"],
        _soak_rows,
    ),
]


def run_one(benchmark: Benchmark, quick: bool, json_dir: Path | None) -> tuple[str, list[Row]]:
    command = [sys.executable, *(benchmark.quick if quick else benchmark.command)]
    shown = "python " + " ".join(command[1:])
    started = time.monotonic()
    finished = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=7200, check=False
    )
    seconds = time.monotonic() - started
    if finished.returncode != 0:
        tail = finished.stderr.strip().splitlines()[-1:] or ["no output"]
        return shown, [(benchmark.name, f"failed after {seconds:.0f} s: {tail[0]}", "", "")]
    if json_dir is not None:
        json_dir.mkdir(parents=True, exist_ok=True)
        (json_dir / f"{benchmark.name}.json").write_text(finished.stdout)
    return shown, benchmark.rows(json.loads(finished.stdout))


def render(rows: list[str]) -> str:
    machine = f"{os.cpu_count()} cores, {platform.machine()}, shared and noisy"
    lines = [
        BEGIN,
        f"Generated by `make bench`; machine: {machine}. Each row gives when it ran.",
        "",
        "| figure | command | result | ceiling or target | ratio | measured |",
        "|---|---|---|---|---|---|",
        *rows,
        END,
    ]
    return "\n".join(lines)


def new_rows(command: str, rows: list[Row], measured: str) -> list[str]:
    return [
        f"| {figure} | `{command}` | {result} | {ceiling} | {ratio} | {measured} |"
        for figure, result, ceiling, ratio in rows
    ]


def earlier_rows(text: str) -> dict[str, list[str]]:
    """Return the table rows of the page by benchmark name, with their measured time."""
    if BEGIN not in text or END not in text:
        return {}
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    # Tables written before rows carried their own time give it once, in the first line.
    generated = re.search(r"on (\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC)", block)
    fallback = f"run ended {generated.group(1)}" if generated else "unknown"
    by_name: dict[str, list[str]] = {}
    for line in block.splitlines():
        cells = line.strip().strip("|").split(" | ")
        if len(cells) < 5 or cells[0].strip() in ("figure", "---"):
            continue
        benchmark = next((b for b in BENCHMARKS if b.command[0] in cells[1]), None)
        if benchmark is None:
            continue
        if len(cells) == 5:
            cells.append(fallback)
        by_name.setdefault(benchmark.name, []).append(
            "| " + " | ".join(cell.strip() for cell in cells) + " |"
        )
    return by_name


def write_page(table: str) -> None:
    text = PAGE.read_text() if PAGE.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + table + tail
    else:
        text = text.rstrip("\n") + "\n\n## Standard set\n\n" + table + "\n"
    PAGE.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller, shorter runs")
    parser.add_argument("--only", nargs="*", help="benchmark names to run")
    parser.add_argument("--json-dir", type=Path, help="also keep each benchmark's JSON here")
    args = parser.parse_args()
    selected = {b.name for b in BENCHMARKS if not args.only or b.name in args.only}
    kept = earlier_rows(PAGE.read_text()) if PAGE.exists() else {}
    rows: list[str] = []
    for benchmark in BENCHMARKS:
        if benchmark.name not in selected:
            rows += kept.get(benchmark.name, [])
            continue
        print(f"running {benchmark.name} ...", file=sys.stderr, flush=True)
        command, results = run_one(benchmark, args.quick, args.json_dir)
        measured = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        rows += new_rows(command, results, measured)
    write_page(render(rows))
    print(f"updated {PAGE.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
