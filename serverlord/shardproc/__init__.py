"""The shard process: one per PostgreSQL shard, owning its checks, deadlines and writes."""
