"""Users, projects and the keys that reach a project, stored in the catalog database."""
