-- The servers using this database (one on SQLite: a second `serve` refuses to start),
-- with their last heartbeat, shown on the dashboard. `scheduled_runs` is kept for the
-- same schema as on PostgreSQL, where several replicas share one database.
CREATE TABLE replicas (
    name TEXT PRIMARY KEY,
    started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    heartbeat_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    lease_until TEXT NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE scheduled_runs (
    job TEXT PRIMARY KEY,
    last_run TEXT NOT NULL,
    replica TEXT NOT NULL
);
