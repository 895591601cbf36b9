-- Creating a check with "unique": ["name"] first looks the name up in its project; in a
-- project of many checks that lookup must not scan all of them.
CREATE INDEX checks_project_name_idx ON checks (project_id, name);
