-- A shard holds its checks, their pings and their flips. The shard process keeps every
-- check of its shard in memory and is the only writer of these tables.
CREATE TABLE checks (
    id uuid PRIMARY KEY,
    project_id bigint,
    name text NOT NULL DEFAULT '' CHECK (length(name) <= 100),
    slug text NOT NULL DEFAULT '' CHECK (length(slug) <= 100),
    tags text NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT '',
    -- 'simple' uses timeout_s; 'cron' and 'oncalendar' use schedule and tz.
    kind text NOT NULL DEFAULT 'simple' CHECK (kind IN ('simple', 'cron', 'oncalendar')),
    timeout_s integer NOT NULL DEFAULT 86400 CHECK (timeout_s > 0),
    grace_s integer NOT NULL DEFAULT 3600 CHECK (grace_s > 0),
    schedule text NOT NULL DEFAULT '* * * * *',
    tz text NOT NULL DEFAULT 'UTC',
    max_runtime_s integer CHECK (max_runtime_s > 0),
    manual_resume boolean NOT NULL DEFAULT false,
    methods text NOT NULL DEFAULT '' CHECK (methods IN ('', 'POST')),
    status text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'up', 'down', 'paused')),
    last_ping timestamptz,
    last_start timestamptz,
    last_start_rid uuid,
    last_duration_s double precision,
    n_pings integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX checks_project_idx ON checks (project_id);

CREATE TABLE pings (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    check_id uuid NOT NULL,
    n integer NOT NULL,
    created timestamptz NOT NULL,
    kind text NOT NULL CHECK (kind IN ('success', 'start', 'fail', 'log', 'ign')),
    exitstatus smallint,
    rid uuid,
    scheme text NOT NULL DEFAULT 'http',
    method text NOT NULL DEFAULT '',
    remote_addr text NOT NULL DEFAULT '',
    ua text NOT NULL DEFAULT '',
    body bytea,
    body_size integer NOT NULL DEFAULT 0,
    duration_s double precision
);

CREATE INDEX pings_check_n_idx ON pings (check_id, n DESC);

-- A flip is a change of status. A timeout flip is stamped with the deadline itself, not
-- with the moment it was noticed.
CREATE TABLE flips (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    check_id uuid NOT NULL,
    created timestamptz NOT NULL,
    old_status text NOT NULL,
    new_status text NOT NULL,
    reason text NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX flips_check_created_idx ON flips (check_id, created DESC);

-- The shard process that owns this shard. Each commit first reads this row, so a process
-- that lost the shard's advisory lock to another server stops writing at its next commit
-- instead of interleaving its writes with the new owner's.
CREATE TABLE shard_owner (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    token uuid NOT NULL,
    pid integer NOT NULL,
    host text NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
