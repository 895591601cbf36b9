"""Benchmark targets: how to start, probe and stop each server that run.py measures.

Every server this module starts listens on 127.0.0.1 only, on a port the kernel picked.
Every wait is bounded, and only processes started here are signalled, by their own pid.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent

# The check id that ping.lua sends when no ids file is given. The apps accept any id.
DEFAULT_CHECK_ID = "00000000-0000-0000-0000-000000000000"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

STOP_TIMEOUT_SECONDS = 15.0
POLL_INTERVAL_SECONDS = 0.1


class TargetError(Exception):
    """A target did not start, did not become ready, or is not a loopback URL."""


@dataclass(frozen=True)
class ServerSettings:
    """Settings shared by every server that run.py starts, so that targets stay comparable."""

    workers: int
    gthread_threads: int
    startup_timeout_seconds: float
    # Directory that contains gunicorn_h1c (`pip install --target DIR gunicorn-h1c`), or None.
    h1c_path: Path | None


@dataclass(frozen=True)
class GunicornTarget:
    name: str
    # module:attribute of a Falcon app in this folder.
    app: str
    worker_class: str
    # Value for gunicorn's --http-parser, or None for workers that bring their own parser.
    http_parser: str | None
    uses_shard: bool
    description: str


@dataclass(frozen=True)
class NginxTarget:
    name: str
    description: str


@dataclass(frozen=True)
class ExternalTarget:
    """A server that is already running, which run.py loads but does not start or stop."""

    name: str
    url: str
    # Roots of the process trees charged with its CPU time, such as the server and its
    # database. Empty leaves the CPU columns empty.
    pids: tuple[int, ...]
    description: str


Target = GunicornTarget | NginxTarget | ExternalTarget


@dataclass(frozen=True)
class RunningTarget:
    url: str
    # Roots of the process trees charged with the target's CPU time, or empty when unknown.
    root_pids: list[int]


@contextmanager
def start_target(
    target: Target, settings: ServerSettings, workdir: Path
) -> Iterator[RunningTarget]:
    """Start `target`, wait until it responds to a ping, and stop it on exit."""
    if isinstance(target, ExternalTarget):
        wait_until_ready(target.url, None, settings.startup_timeout_seconds)
        yield RunningTarget(url=target.url, root_pids=list(target.pids))
        return

    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        root_pids: list[int] = []
        env = os.environ.copy()
        if isinstance(target, GunicornTarget) and target.uses_shard:
            shard = stack.enter_context(start_echo_shard(workdir, settings))
            root_pids.append(shard.pid)
            env["SERVERLORD_SHARD_SOCKET"] = str(workdir / "shard.sock")

        port = pick_free_port()
        if isinstance(target, GunicornTarget):
            command = gunicorn_command(target, settings, port, workdir)
            if target.http_parser == "fast" and settings.h1c_path is not None:
                env["PYTHONPATH"] = os.pathsep.join(
                    filter(None, [str(settings.h1c_path), env.get("PYTHONPATH")])
                )
        else:
            command = nginx_command(port, workdir, settings.workers)

        server = stack.enter_context(start_process(command, workdir / "server.out", env))
        root_pids.append(server.pid)
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, server, settings.startup_timeout_seconds, workdir / "server.out")
        yield RunningTarget(url=url, root_pids=root_pids)


def gunicorn_command(
    target: GunicornTarget, settings: ServerSettings, port: int, workdir: Path
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        f"--bind=127.0.0.1:{port}",
        f"--workers={settings.workers}",
        f"--worker-class={target.worker_class}",
        f"--chdir={HERE}",
        f"--error-logfile={workdir / 'gunicorn.log'}",
        "--log-level=warning",
        # Without this every gunicorn on the machine would share the default control socket
        # in $HOME/.gunicorn (gunicorn >= 25.1), and runs in parallel would collide.
        "--no-control-socket",
    ]
    # gunicorn turns a sync worker with --threads > 1 into gthread, so only gthread gets it.
    if target.worker_class == "gthread":
        command.append(f"--threads={settings.gthread_threads}")
    if target.http_parser is not None:
        command.append(f"--http-parser={target.http_parser}")
    command.append(target.app)
    return command


def nginx_command(port: int, workdir: Path, workers: int) -> list[str]:
    config = workdir / "nginx.conf"
    config.write_text(render_nginx_config(port, workdir, workers))
    # -e keeps nginx from opening the system error log before it reads the config.
    return ["nginx", "-p", str(workdir), "-c", str(config), "-e", str(workdir / "error.log")]


def render_nginx_config(port: int, workdir: Path, workers: int) -> str:
    # nginx creates only the last component of a temp path, so the parent must exist.
    temp = workdir / "temp"
    temp.mkdir(exist_ok=True)
    return f"""
daemon off;
worker_processes {workers};
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    # The default of 1000 makes wrk reconnect every 1000 requests. gunicorn and uvicorn
    # set no such limit, and this target is meant as the ceiling.
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "OK";
        }}
    }}
}}
"""


@contextmanager
def start_echo_shard(workdir: Path, settings: ServerSettings) -> Iterator[subprocess.Popen[bytes]]:
    socket_path = workdir / "shard.sock"
    command = [sys.executable, str(HERE / "echo_shard.py"), str(socket_path)]
    with start_process(command, workdir / "shard.out", os.environ.copy()) as shard:
        deadline = time.monotonic() + settings.startup_timeout_seconds
        while not socket_path.exists():
            if shard.poll() is not None or time.monotonic() > deadline:
                raise TargetError(
                    f"echo shard did not create {socket_path}; see {workdir / 'shard.out'}"
                )
            time.sleep(POLL_INTERVAL_SECONDS)
        yield shard


@contextmanager
def start_process(
    command: list[str], output: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` with stdout and stderr in `output`, and stop it on exit."""
    logger.debug("starting %s", " ".join(command))
    with output.open("wb") as output_file:
        process = subprocess.Popen(
            command, stdout=output_file, stderr=subprocess.STDOUT, env=env, cwd=HERE
        )
    try:
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Send SIGTERM, wait, then send SIGKILL. gunicorn and nginx stop their workers on SIGTERM."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning(
            "pid %d ignored SIGTERM for %.0f s; killing it", process.pid, STOP_TIMEOUT_SECONDS
        )
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


def pick_free_port() -> int:
    # NOTE: the server binds the port only after this returns, so another program can take
    # it in between. The server then fails to start, and that visit is lost.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_ready(
    url: str,
    process: subprocess.Popen[bytes] | None,
    timeout_seconds: float,
    log: Path | None = None,
) -> None:
    """Wait until `url` responds to GET /ping/<id>.

    A server started here must return 200, because that is what the load test expects. For
    an external target any status will do, because its ids may not include the default id.
    """
    host, port = split_loopback_url(url)
    path = f"/ping/{DEFAULT_CHECK_ID}"
    deadline = time.monotonic() + timeout_seconds
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TargetError(f"server for {url} exited with code {process.returncode}; see {log}")
        try:
            connection = http.client.HTTPConnection(host, port, timeout=1.0)
            connection.request("GET", path)
            status = connection.getresponse().status
            connection.close()
        except OSError as error:
            last_error = repr(error)
        else:
            if process is None or status == 200:
                return
            last_error = f"status {status}"
        time.sleep(POLL_INTERVAL_SECONDS)
    raise TargetError(f"{url}{path} not ready within {timeout_seconds} s: {last_error}; see {log}")


def split_loopback_url(url: str) -> tuple[str, int]:
    """Return host and port of a http://LOOPBACK:PORT URL, or raise TargetError."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or parts.port is None:
        raise TargetError(
            f"invalid target URL {url!r}: expected http://127.0.0.1:PORT, http://[::1]:PORT "
            "or http://localhost:PORT, because the benchmark loads only this machine"
        )
    if parts.path not in ("", "/") or parts.query:
        raise TargetError(
            f"invalid target URL {url!r}: remove the path; ping.lua always requests /ping/<id>"
        )
    return parts.hostname, parts.port
