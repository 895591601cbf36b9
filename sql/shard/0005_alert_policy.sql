-- Per-check alert policy. The defaults alert on the first failure or miss and recover
-- on the first success, with no reminders and no late notices.
ALTER TABLE checks
    ADD COLUMN alert_after integer NOT NULL DEFAULT 1 CHECK (alert_after BETWEEN 1 AND 1000),
    ADD COLUMN recover_after integer NOT NULL DEFAULT 1 CHECK (recover_after BETWEEN 1 AND 1000),
    ADD COLUMN reminder_s integer CHECK (reminder_s > 0),
    ADD COLUMN late_notice boolean NOT NULL DEFAULT false;
