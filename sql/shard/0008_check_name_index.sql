-- Creating a check with "unique": ["name"] first looks the name up in its project. The
-- index keeps that lookup from scanning every check of a large project.
CREATE INDEX checks_project_name_idx ON checks (project_id, name);
