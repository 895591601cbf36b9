-- Placement of checks: a check's UUID hashes into one of a fixed number of slots, and
-- this map assigns each slot to a shard. Moving slots, never rehashing, keeps a check on
-- the same shard across restarts.
CREATE TABLE slot_map (
    slot integer PRIMARY KEY CHECK (slot >= 0),
    shard integer NOT NULL CHECK (shard >= 0)
);

CREATE TABLE shards (
    shard integer PRIMARY KEY CHECK (shard >= 0),
    -- How the shard's database is reached when it is not given by an explicit DSN:
    -- 'database' (its own database beside the catalog) or 'schema' (a schema of the
    -- catalog database, for hosts that do not allow creating databases).
    layout text NOT NULL CHECK (layout IN ('database', 'schema')),
    created_at timestamptz NOT NULL DEFAULT now()
);
