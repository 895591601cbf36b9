"""Helpers that run the whole server as a user would: `serverlord serve` in a subprocess."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

READY_TIMEOUT = 60.0

_user_numbers = itertools.count(1)


@dataclass(frozen=True)
class Project:
    """A project made through the command line, with its keys."""

    id: int
    rw_key: str
    ro_key: str
    ping_key: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def request(
    method: str,
    url: str,
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 15.0,
) -> Response:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, path, body=data, headers=dict(headers or {}))
        answer = conn.getresponse()
        return Response(
            answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        )
    finally:
        conn.close()


@dataclass
class Server:
    """A running `serverlord serve`, with the means to inspect and hurt its processes."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        self.port = int(self.env["PORT"])
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "serverlord.cli", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if request("GET", f"{self.url}/healthz", timeout=2).status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {READY_TIMEOUT} s:\n{self.log()}")

    def stop(self, timeout: float = 40.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                child.kill()
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def shard_pid(self, shard: int) -> int:
        assert self.process is not None
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if "serverlord.shardproc" in cmdline and cmdline[cmdline.index("--shard") + 1] == str(
                shard
            ):
                return int(child.pid)
        raise LookupError(f"no process for shard {shard}")

    def cli(self, *args: str) -> Any:
        """Run `serverlord <args> --json` against this server's catalog; return its output."""
        finished = subprocess.run(
            [sys.executable, "-m", "serverlord.cli", *args, "--json"],
            env=self.env,
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert finished.returncode == 0, finished.stderr.decode(errors="replace")
        return json.loads(finished.stdout)

    def create_project(self, name: str = "tests") -> Project:
        """Create a user and a project through the command line; return its keys."""
        email = f"user{next(_user_numbers)}-{os.getpid()}@example.com"
        self.cli("user", "create", email)
        created = self.cli("project", "create", "--owner", email, "--name", name)
        keys = created["keys"]
        return Project(created["project_id"], keys["rw"], keys["ro"], keys["ping"])

    @property
    def project(self) -> Project:
        """A project shared by the tests that need any one project."""
        if "project" not in self.extra:
            self.extra["project"] = self.create_project("shared")
        project: Project = self.extra["project"]
        return project

    def api(self, method: str, path: str, key: str | None = None, body: Any = None) -> Response:
        """Call the management API; `body` other than str or bytes is sent as JSON."""
        headers = {} if key is None else {"X-Api-Key": key}
        data = body if body is None or isinstance(body, str | bytes) else json.dumps(body)
        return request(method, f"{self.url}{path}", data, headers)

    def create_check(self, **fields: Any) -> dict[str, Any]:
        body = {"name": "job", "interval": "1h", "grace_period": "5m", **fields}
        headers = {"X-Api-Key": self.project.rw_key}
        answer = request("POST", f"{self.url}/api/tasks", json.dumps(body), headers)
        assert answer.status == 201, answer.text
        created: dict[str, Any] = answer.json()
        return created


def server_env(
    database_url: str | None, runtime_dir: Path, shard_count: int = 2, **extra: str
) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DB_", "SHARD_", "DATABASE_URL", "PORT", "SERVER_PORT"))
    }
    env.update(
        PORT=str(free_port()),
        SERVER_HOST="127.0.0.1",
        SHARD_COUNT=str(shard_count),
        RUNTIME_DIR=str(runtime_dir),
        SHARD_POOL_SIZE="3",
        WEB_CONCURRENCY="2",
        API_TIMEOUT="5",
        LOG_LEVEL="INFO",
    )
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


@contextlib.contextmanager
def running_server(env: dict[str, str], log_path: Path) -> Iterator[Server]:
    server = Server(env, log_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
