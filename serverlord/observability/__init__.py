"""Observability: OpenTelemetry metrics and traces of every process, and `GET /metrics`.

- `telemetry.Telemetry`: the set-up of one process (resource, meter, tracer, OTLP export).
- `shard.ShardTelemetry`: a shard process's instruments, request wrapper and `metrics` op.
- `web.install_web_telemetry`: a web worker's instruments and the `/metrics` endpoint.
- `exposition`: snapshots of metrics, their merge and the Prometheus text format.
- `logcontext`: shard, check and trace ids on JSON log lines.

docs/observability.md lists the metrics and how to scrape and export them.
"""
