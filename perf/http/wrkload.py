"""Run wrk with ping.lua against one URL and parse its report.

Tested with wrk 4.1.0 (Debian package). wrk sends requests for the given duration and then
stops by itself, and the subprocess also gets a hard timeout.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

PING_SCRIPT = Path(__file__).resolve().parent / "ping.lua"

# wrk needs a moment after the duration to close connections and print its report.
WRK_EXIT_GRACE_SECONDS = 30

# Units that wrk prints for latency, in milliseconds.
LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}

REQUESTS_PATTERN = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.MULTILINE)
RATE_PATTERN = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
SOCKET_ERRORS_PATTERN = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
NON_2XX_PATTERN = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(Exception):
    """wrk failed to run, or printed a report that could not be parsed."""


@dataclass(frozen=True)
class LoadSettings:
    """The wrk options shared by every target in one benchmark run."""

    threads: int
    connections: int
    duration_seconds: int
    # Unmeasured load before each measured run, or 0 to skip it.
    warmup_seconds: int
    # A request without a response after this long counts as a timeout error.
    request_timeout_seconds: int
    method: str
    ids_file: Path | None


@dataclass(frozen=True)
class WrkReport:
    requests: int
    elapsed_seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    # Socket errors (connect, read, write, timeout) plus responses outside 2xx and 3xx.
    errors: int
    # Responses outside 2xx and 3xx, also counted in `errors`.
    non_2xx: int


def run_wrk(url: str, settings: LoadSettings, duration_seconds: int) -> WrkReport:
    """Load `url` for `duration_seconds` and return wrk's parsed report."""
    command = [
        "wrk",
        f"--threads={settings.threads}",
        f"--connections={settings.connections}",
        f"--duration={duration_seconds}s",
        f"--timeout={settings.request_timeout_seconds}s",
        "--latency",
        f"--script={PING_SCRIPT}",
        url,
    ]
    env = os.environ | {"PING_METHOD": settings.method}
    if settings.ids_file is not None:
        env["PING_IDS"] = str(settings.ids_file)

    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=duration_seconds + WRK_EXIT_GRACE_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise WrkError(f"wrk against {url} did not exit within {error.timeout} s") from error
    if completed.returncode != 0:
        raise WrkError(
            f"wrk against {url} failed with exit code {completed.returncode}: "
            f"{completed.stderr.strip() or completed.stdout.strip()}"
        )
    return parse_wrk_report(completed.stdout)


def parse_wrk_report(text: str) -> WrkReport:
    """Parse the report that `wrk --latency` prints."""
    requests_match = REQUESTS_PATTERN.search(text)
    rate_match = RATE_PATTERN.search(text)
    if requests_match is None or rate_match is None:
        raise WrkError(f"wrk report has no request count or rate:\n{text}")

    socket_errors = SOCKET_ERRORS_PATTERN.search(text)
    non_2xx = NON_2XX_PATTERN.search(text)
    errors = sum(int(count) for count in socket_errors.groups()) if socket_errors else 0
    non_2xx_count = int(non_2xx.group(1)) if non_2xx else 0
    errors += non_2xx_count

    elapsed_value, elapsed_unit = requests_match.group(2), requests_match.group(3)
    return WrkReport(
        requests=int(requests_match.group(1)),
        elapsed_seconds=float(elapsed_value) * LATENCY_UNITS_MS[elapsed_unit] / 1000,
        requests_per_second=float(rate_match.group(1)),
        p50_ms=parse_percentile_ms(text, "50"),
        p99_ms=parse_percentile_ms(text, "99"),
        errors=errors,
        non_2xx=non_2xx_count,
    )


def parse_percentile_ms(text: str, percentile: str) -> float:
    """Return one percentile from wrk's "Latency Distribution" block, in milliseconds."""
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE)
    if match is None:
        raise WrkError(f"wrk report has no {percentile}% latency line; was --latency passed?")
    return float(match.group(1)) * LATENCY_UNITS_MS[match.group(2)]
