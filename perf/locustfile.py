"""Locust users that behave like cron hosts pinging Server Lord.

Each user is one host that owns `--checks-per-host` checks, each on an interval drawn
from `--intervals`. A job fires on its interval boundary, as cron does (so many jobs
of one interval fire together), runs for a while and reports:

- a run wrapped in start and finish (`--start-ratio`): `/start`, then after the run
  `/ping/<uuid>` or, on failure, `/fail` or an exit status such as `/2`;
- a plain run: one ping at the end, success or failure;
- now and then a `/log` POST with a body of job output (`--log-ratio`);
- no report at all for a missed run (`--miss-ratio`), as when the host is down, so
  the check goes late and then down at its deadline.

`--fail-ratio` sets the share of runs that fail. `--time-scale` divides every interval
and run time, so that `--time-scale 60` runs an hourly job once a minute. The checks'
timeout and grace are scaled the same way, so their deadlines are real for the server.

Each user creates its checks through the API at its start, with `--api-key` (a
project's read-write key). Re-runs reuse those checks, because their names are unique
per host. With `--ids-file` (one check UUID per line) the users take existing checks
from the file in turn instead.

The reference scenario is 10,000 hosts and 100,000 checks:

    .venv/bin/locust -f perf/locustfile.py --headless --host http://127.0.0.1:8080 \\
        -u 10000 -r 200 -t 30m --api-key <rw key> --checks-per-host 10 \\
        --time-scale 60 --csv /tmp/locust --html /tmp/locust.html

NOTE: one Locust process runs on one CPU core, so on a small machine Locust itself may
be the bottleneck. Use `--processes` for more load, and keep the target on loopback.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from locust import FastHttpUser, events, task
from locust.env import Environment

_host_numbers = itertools.count(1)
_id_cursor = itertools.count(0)
_ids: list[str] = []


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("Server Lord cron hosts")
    group.add_argument("--api-key", default="", help="read-write API key to create checks with")
    group.add_argument("--ids-file", default="", help="file of check UUIDs, one per line")
    group.add_argument(
        "--checks-per-host", type=int, default=10, help="number of checks of each user"
    )
    group.add_argument(
        "--intervals",
        default="60,300,3600,86400",
        help="job intervals in seconds, comma-separated; each check takes one at random",
    )
    group.add_argument(
        "--time-scale", type=float, default=1.0, help="divide intervals and run times by this"
    )
    group.add_argument("--fail-ratio", type=float, default=0.02, help="share of failed runs")
    group.add_argument(
        "--start-ratio", type=float, default=0.5, help="share of runs that send /start first"
    )
    group.add_argument(
        "--log-ratio", type=float, default=0.05, help="share of runs that also POST /log"
    )
    group.add_argument(
        "--miss-ratio", type=float, default=0.0, help="share of runs that send nothing"
    )
    group.add_argument(
        "--channels",
        default="",
        help='channels of the created checks, as the API takes them ("*" for all)',
    )
    group.add_argument(
        "--max-run-seconds",
        type=float,
        default=30.0,
        help="maximum seconds of a job run, before scaling",
    )


def load_ids(environment: Environment, **kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None or not options.ids_file:
        return
    with open(options.ids_file, encoding="ascii") as ids:
        _ids.extend(line.strip() for line in ids if line.strip())


events.init_command_line_parser.add_listener(add_arguments)  # type: ignore[no-untyped-call]
events.test_start.add_listener(load_ids)  # type: ignore[no-untyped-call]


@dataclass(order=True)
class Job:
    due: float
    check_id: str = field(compare=False)
    period: float = field(compare=False)


class CronHost(FastHttpUser):
    """One host with a crontab: it pings each of its checks when the job's run ends."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        assert options is not None
        self.options = options
        self.scale = max(options.time_scale, 1e-6)
        self.host_name = f"host{next(_host_numbers)}"
        intervals = [float(value) for value in options.intervals.split(",") if value.strip()]
        now = self._now()
        self.jobs: list[Job] = []
        for number in range(options.checks_per_host):
            period = random.choice(intervals) / self.scale
            check_id = self._check_for(number, period)
            # Spread the first runs over one period, so the hosts do not all start at once.
            heapq.heappush(self.jobs, Job(now + random.uniform(0, period), check_id, period))

    def wait_time(self) -> float:
        if not self.jobs:
            return 1.0
        # At most a second, so that a stop request is noticed quickly.
        return min(1.0, max(0.0, self.jobs[0].due - self._now()))

    @task
    def run_due_job(self) -> None:
        if not self.jobs or self.jobs[0].due > self._now():
            return
        job = heapq.heappop(self.jobs)
        if random.random() >= self.options.miss_ratio:
            self._run(job.check_id)
        # The next run is on the next boundary of the interval, as cron schedules it.
        next_boundary = (math.floor(self._now() / job.period) + 1) * job.period
        heapq.heappush(self.jobs, Job(next_boundary, job.check_id, job.period))

    def _run(self, check_id: str) -> None:
        options = self.options
        failed = random.random() < options.fail_ratio
        rid = str(uuid.uuid4())
        if random.random() < options.start_ratio:
            self._ping(check_id, "/start", "/ping/[id]/start", rid)
            self._sleep(random.uniform(0, options.max_run_seconds) / self.scale)
        if random.random() < options.log_ratio:
            self.client.post(
                f"/ping/{check_id}/log",
                data=f"{self.host_name}: job output line {random.randint(1, 10**6)}\n",
                name="/ping/[id]/log",
            )
        if not failed:
            self._ping(check_id, "", "/ping/[id]", rid)
        elif random.random() < 0.5:
            self._ping(check_id, "/fail", "/ping/[id]/fail", rid)
        else:
            self._ping(check_id, f"/{random.randint(1, 3)}", "/ping/[id]/[exit status]", rid)

    def _ping(self, check_id: str, suffix: str, name: str, rid: str) -> None:
        self.client.get(f"/ping/{check_id}{suffix}?rid={rid}", name=name)

    def _check_for(self, number: int, period: float) -> str:
        if _ids:
            return _ids[next(_id_cursor) % len(_ids)]
        if not self.options.api_key:
            raise ValueError("missing --api-key (a read-write key) or --ids-file with checks")
        timeout = max(1, round(period))
        body = {
            "name": f"{self.host_name}-job{number}",
            "tags": f"locust {self.host_name}",
            "timeout": timeout,
            "grace": max(1, round(timeout * 0.2)),
            "unique": ["name"],
        }
        if self.options.channels:
            body["channels"] = self.options.channels
        with self.client.post(
            "/api/v3/checks/",
            json=body,
            headers={"X-Api-Key": self.options.api_key},
            name="/api/v3/checks/",
            catch_response=True,
        ) as response:
            if response.status_code not in (200, 201):
                response.failure(f"creating a check failed with {response.status_code}")
                raise ValueError(f"creating a check failed: {response.text}")
            check_id: str = response.json()["uuid"]
            return check_id

    def _sleep(self, seconds: float) -> None:
        # Locust patches time.sleep with gevent's, so other users keep running.
        time.sleep(seconds)

    def _now(self) -> float:
        return time.time()
