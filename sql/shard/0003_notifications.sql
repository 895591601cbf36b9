-- The alert outbox. The shard process inserts a notification in the same transaction as
-- the flip (or other event) that calls for it, so an alert is stored exactly when its
-- event is. The deliverer claims due rows, sends them and records each attempt.
CREATE TABLE notifications (
    -- The event id: stable across retries and restarts, sent as the Idempotency-Key.
    id uuid PRIMARY KEY,
    check_id uuid NOT NULL,
    -- When the event happened (for a flip: the flip's `created`).
    event_time timestamptz NOT NULL,
    channel_id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('down', 'up', 'late', 'reminder', 'flapping')),
    -- The message content, captured at the event: check name, slug, tags, status,
    -- times, last ping body excerpt, exit status.
    payload jsonb NOT NULL,
    -- pending: waiting to be sent or retried. sent, failed, skipped: final.
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
    created timestamptz NOT NULL,
    -- The earliest time of the next attempt.
    due timestamptz NOT NULL,
    -- Attempts started, counting one whose process died before it finished.
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- A deliverer that claims the row sets both. Another deliverer may claim it only
    -- after the lease expires, so a crashed process's claims are retried after restart.
    claim_token uuid,
    lease_expires timestamptz,
    finished timestamptz,
    last_error text
);

CREATE INDEX notifications_pending_due_idx ON notifications (due) WHERE status = 'pending';
CREATE INDEX notifications_check_idx ON notifications (check_id, event_time DESC);
CREATE INDEX notifications_finished_idx ON notifications (finished) WHERE status <> 'pending';

-- One row per delivery try, for the "what happened to my alert" view.
CREATE TABLE notification_attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    started timestamptz NOT NULL,
    duration_s double precision NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('sent', 'failed', 'timeout', 'rejected')),
    -- HTTP status or SMTP reply code, when the receiver replied.
    status_code integer,
    -- What went wrong, with URLs cut to their origin and channel secrets removed.
    error text
);

CREATE INDEX notification_attempts_notification_idx ON notification_attempts (notification_id);

-- The delivery health of each channel as seen from this shard: notifications that
-- failed for good, and the latest such failure.
CREATE TABLE channel_failures (
    channel_id uuid PRIMARY KEY,
    failures integer NOT NULL DEFAULT 0,
    last_failed timestamptz NOT NULL,
    last_error text NOT NULL,
    last_notification_id uuid NOT NULL
);
