"""perf/locustfile.py runs headless against a test server without errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server import Server

pytestmark = pytest.mark.e2e

LOCUSTFILE = Path(__file__).resolve().parent.parent / "perf" / "locustfile.py"


def test_locust_cron_hosts_run_without_errors(server: Server, tmp_path: Path) -> None:
    project = server.create_project("locust")
    report = tmp_path / "report"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            server.url,
            "--users",
            "10",
            "--spawn-rate",
            "10",
            "--run-time",
            "5s",
            "--api-key",
            project.rw_key,
            "--checks-per-host",
            "3",
            "--time-scale",
            "600",
            "--csv",
            str(report),
            "--html",
            str(tmp_path / "report.html"),
            "--only-summary",
        ],
        capture_output=True,
        check=False,
        timeout=120,
        cwd=tmp_path,
    )
    output = finished.stderr.decode(errors="replace")[-3000:]
    assert finished.returncode == 0, output

    with (tmp_path / "report_stats.csv").open(newline="") as stats_file:
        rows = {row["Name"]: row for row in csv.DictReader(stats_file)}
    assert int(rows["/api/v3/checks/"]["Request Count"]) == 30
    assert int(rows["/ping/[id]"]["Request Count"]) > 0
    assert int(rows["/ping/[id]/start"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert (tmp_path / "report.html").stat().st_size > 0
    assert not (tmp_path / "report_exceptions.csv").read_text().strip().splitlines()[1:]
