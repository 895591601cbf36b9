"""PostgreSQL access: the embedded server, migrations and the placement of shards."""
