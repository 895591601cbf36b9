-- Users, their projects and the keys that reach a project. Checks live on the shards and
-- name their project by projects.id.
CREATE TABLE users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    created timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX users_email_idx ON users (lower(email));

CREATE TABLE projects (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id bigint NOT NULL REFERENCES users (id),
    name text NOT NULL DEFAULT '' CHECK (length(name) <= 100),
    -- Public: it appears in every badge URL of the project.
    badge_key uuid NOT NULL UNIQUE,
    -- Private: signs the badge URLs, so one badge URL does not open the others.
    badge_secret bytea NOT NULL CHECK (length(badge_secret) >= 16),
    created timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX projects_owner_idx ON projects (owner_id);

-- Users other than the owner who may see ('ro') or also change ('rw') a project.
CREATE TABLE project_members (
    project_id bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('ro', 'rw')),
    PRIMARY KEY (project_id, user_id)
);

-- API keys ('rw' read-write, 'ro' read-only) and ping keys. A key is shown once, when it
-- is created; only its SHA-256 hash is stored, with its first characters for display.
CREATE TABLE project_keys (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('rw', 'ro', 'ping')),
    key_hash bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    revoked timestamptz
);

CREATE INDEX project_keys_project_idx ON project_keys (project_id);
