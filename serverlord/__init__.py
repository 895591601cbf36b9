"""Server Lord: a self-hosted monitor for cron jobs and other scheduled work."""

__version__ = "0.1.0"
