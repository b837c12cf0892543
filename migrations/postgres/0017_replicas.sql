-- Several servers (replicas) on one database. Each `serve` holds a lease in `replicas`,
-- renewed by its heartbeat; files another replica claimed are only taken over once its
-- lease has run out. `scheduled_runs` makes a scheduled job run once across replicas:
-- the replica that moves a job's `last_run` forward is the one that runs it.
CREATE TABLE replicas (
    name TEXT PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until TIMESTAMPTZ NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    pid BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE scheduled_runs (
    job TEXT PRIMARY KEY,
    last_run TIMESTAMPTZ NOT NULL,
    replica TEXT NOT NULL
);
