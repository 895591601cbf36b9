"""gunicorn settings for the web tier, read from the same environment as the rest.

The supervisor starts gunicorn with this file. Any gunicorn option can still be changed
through GUNICORN_CMD_ARGS, which gunicorn applies on top.
"""

from __future__ import annotations

from serverlord.config import from_env

_settings = from_env()

bind = [
    f"[{_settings.host}]:{_settings.port}"
    if ":" in _settings.host
    else f"{_settings.host}:{_settings.port}"
]
workers = _settings.web_workers
# uvicorn_worker.UvicornWorker, measured against the other worker types on the ping path
# (see docs/benchmarks.md), with bounds on each request head.
worker_class = "serverlord.web.worker.Worker"
# Seconds a worker may stay silent before the master replaces it.
timeout = 30
# Seconds in-flight requests get to finish on SIGTERM before workers are killed.
graceful_timeout = 10
keepalive = 5
# Pings are tiny; a lower backlog than the default only drops connections under bursts.
backlog = 2048
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "serverlord-web"
# The control socket's default path is shared by every gunicorn of the user, so two
# servers on one machine would fight over it; the supervisor does not use it.
control_socket_disable = True
