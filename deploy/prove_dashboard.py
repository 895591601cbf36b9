"""Evaluate every query of the Grafana dashboard against a real Prometheus, and chart a run.

Grafana cannot be installed on the development machines, but Prometheus can (Debian's
`prometheus` package). This script starts a private Prometheus that scrapes a running
Server Lord with deploy/prometheus/prometheus.yml (only the target and the scrape
interval replaced), waits, then runs each panel's PromQL as Grafana would, with
`$__rate_interval` replaced by a fixed window. It prints one line per query and exits
with status 1 when a query returns no data. With `--chart` it also draws the main
panels of the run into a PNG with matplotlib.

    .venv/bin/python deploy/prove_dashboard.py --target 127.0.0.1:8080 --seconds 180 \\
        --chart docs/observability-run.png

tests/test_observability_dashboard.py imports this file to check the dashboard in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parent
DASHBOARD = DEPLOY / "grafana" / "serverlord-dashboard.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
SHIPPED_TARGET = "127.0.0.1:8080"
SHIPPED_INTERVAL = "scrape_interval: 15s"
READY_TIMEOUT = 30.0

# Panels drawn by --chart, in this order.
CHART_PANELS = (
    "Pings per second by signal",
    "Ping latency at the web tier",
    "Ping latency in the shard process",
    "Group commit: changes per transaction",
    "Detection latency (deadline to committed flip)",
    "Checks by status",
    "Shard balance: pings per second per shard",
    "Delivery latency (event to delivered)",
)


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str
    legend: str


def panel_queries(dashboard: Path = DASHBOARD) -> list[PanelQuery]:
    """Return every query of every panel of the dashboard, in panel order."""
    data = json.loads(dashboard.read_text())
    queries = []
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            queries.append(
                PanelQuery(panel["title"], target["refId"], target["expr"], target["legendFormat"])
            )
    return queries


def promql(expr: str, rate_interval: str) -> str:
    """Replace the Grafana variables of a dashboard query."""
    return expr.replace("$__rate_interval", rate_interval)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


@contextlib.contextmanager
def running_prometheus(target: str, scrape_interval: str, folder: Path) -> Iterator[str]:
    """Run a private Prometheus on 127.0.0.1 that scrapes `target`; yield its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError("prometheus is not installed (Debian: apt-get install prometheus)")
    config = PROMETHEUS_CONFIG.read_text()
    config = config.replace(SHIPPED_TARGET, target).replace(
        SHIPPED_INTERVAL, f"scrape_interval: {scrape_interval}"
    )
    config_path = folder / "prometheus.yml"
    config_path.write_text(config)
    port = _free_port()
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with status {process.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"prometheus did not become ready within {READY_TIMEOUT:g} s")


def scrapes_succeeded(url: str) -> float:
    """Return how many scrapes of the server Prometheus has made with up == 1."""
    query = urllib.parse.quote("sum(sum_over_time(up{job='serverlord'}[1h]))")
    found = _get_json(f"{url}/api/v1/query?query={query}")["data"]["result"]
    return float(found[0]["value"][1]) if found else 0.0


def instant(url: str, expr: str) -> list[dict[str, Any]]:
    """Run an instant query and return its result vector; raise on a PromQL error."""
    answer = _get_json(f"{url}/api/v1/query?query={urllib.parse.quote(expr)}")
    if answer["status"] != "success":
        raise ValueError(f"query failed: {answer.get('error')}: {expr}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def series_range(
    url: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    answer = _get_json(f"{url}/api/v1/query_range?{params}")
    if answer["status"] != "success":
        raise ValueError(f"query failed: {answer.get('error')}: {expr}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    values = [float(sample["value"][1]) for sample in result]
    return [value for value in values if math.isfinite(value)]


def legend(template: str, labels: dict[str, str]) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace(f"{{{{{key}}}}}", value)
    # Placeholders for labels that a series lacks (web workers have no shard) are removed.
    while "{{" in text and "}}" in text:
        start = text.index("{{")
        text = text[:start] + text[text.index("}}", start) + 2 :]
    return text.strip() or "value"


def draw_chart(
    url: str, start: float, end: float, rate_interval: str, output: Path, title: str
) -> None:
    """Draw CHART_PANELS over [start, end] from the dashboard's own queries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queries = panel_queries()
    step = max(1.0, (end - start) / 300)
    figure, axes = plt.subplots(4, 2, figsize=(14, 15), constrained_layout=True)
    for axis, panel in zip(axes.flat, CHART_PANELS, strict=True):
        for query in (q for q in queries if q.panel == panel):
            for series in series_range(url, promql(query.expr, rate_interval), start, end, step):
                points = [(float(t) - start, float(v)) for t, v in series["values"]]
                axis.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    label=legend(query.legend, series["metric"]),
                )
        axis.set_title(panel, fontsize=11)
        axis.set_xlabel("seconds into the run")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.savefig(output, dpi=80)
    plt.close(figure)


def evaluate(url: str, rate_interval: str) -> list[tuple[PanelQuery, list[float], int]]:
    """Return, for each dashboard query, its finite values and its number of series."""
    rows = []
    for query in panel_queries():
        result = instant(url, promql(query.expr, rate_interval))
        rows.append((query, finite_values(result), len(result)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port of a running Server Lord")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the run in seconds")
    parser.add_argument("--scrape-interval", default="2s", help="Prometheus scrape interval")
    parser.add_argument("--rate-interval", default="30s", help="window for $__rate_interval")
    parser.add_argument("--chart", type=Path, help="PNG file to draw the main panels into")
    parser.add_argument("--title", default="Server Lord: a real run", help="title of the chart")
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory() as folder,
        running_prometheus(args.target, args.scrape_interval, Path(folder)) as url,
    ):
        start = time.time()
        time.sleep(args.seconds)
        end = time.time()
        empty = 0
        for query, values, series in evaluate(url, args.rate_interval):
            shown = ", ".join(f"{value:.4g}" for value in values[:4]) or "no finite value"
            print(f"{query.panel} [{query.ref}]: {series} series: {shown}")
            empty += series == 0
        if args.chart is not None:
            draw_chart(url, start, end, args.rate_interval, args.chart, args.title)
            print(f"chart written to {args.chart}")
    if empty:
        print(f"{empty} queries returned no data", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
