-- Notification targets of a project: webhooks, email recipients, apprise URLs. The form
-- of `config` depends on `kind`, and serverlord.alerting.channels.validate_channel
-- returns it in normal form.
CREATE TABLE channels (
    id uuid PRIMARY KEY,
    project_id bigint NOT NULL,
    name text NOT NULL DEFAULT '' CHECK (length(name) <= 100),
    kind text NOT NULL CHECK (kind IN ('webhook', 'email', 'apprise')),
    config jsonb NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX channels_project_idx ON channels (project_id);
