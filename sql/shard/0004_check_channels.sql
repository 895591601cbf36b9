-- The channels a check notifies, as catalog channel ids.
ALTER TABLE checks ADD COLUMN channels uuid[] NOT NULL DEFAULT '{}';

-- Retention deletes flips by age, across all checks.
CREATE INDEX flips_created_idx ON flips (created);
