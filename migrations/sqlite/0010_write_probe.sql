-- One row that readiness checks overwrite to learn whether the database takes writes
-- again after it refused one (a full disk, say).
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at TEXT NOT NULL
);
