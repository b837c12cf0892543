-- CTData schema, SQLite (the embedded default). Mirrors migrations/postgres.
-- Timestamps are RFC 3339 text in UTC; ids are UUID text.

CREATE TABLE devices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen_at  TEXT
);

CREATE TABLE batches (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id      INTEGER NOT NULL REFERENCES devices(id),
    batch_id       TEXT NOT NULL,
    sha256         TEXT NOT NULL,
    format         TEXT NOT NULL,
    channel        TEXT NOT NULL,
    file_name      TEXT NOT NULL,
    claim_name     TEXT,
    created_at     TEXT,
    received_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    row_count      INTEGER NOT NULL,
    inserted       INTEGER NOT NULL,
    duplicates     INTEGER NOT NULL,
    cursor_first   INTEGER,
    cursor_last    INTEGER,
    UNIQUE (device_id, batch_id)
);
CREATE INDEX batches_received_at ON batches (received_at);

-- AUTOINCREMENT keeps cursors strictly increasing, never reused.
CREATE TABLE sightings (
    cursor       INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    batch        INTEGER NOT NULL REFERENCES batches(id),
    device_id    INTEGER NOT NULL REFERENCES devices(id),
    observed_at  TEXT NOT NULL,  -- UTC, fixed width, so text order is time order
    observed_offset INTEGER NOT NULL DEFAULT 0,
    latitude     REAL NOT NULL,
    longitude    REAL NOT NULL,
    altitude     REAL,
    accuracy     REAL,
    observer     TEXT,
    species      TEXT,
    count        INTEGER,
    attributes   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX sightings_observed_at ON sightings (observed_at);
CREATE INDEX sightings_device ON sightings (device_id, cursor);
CREATE INDEX sightings_species ON sightings (species, cursor);
CREATE INDEX sightings_batch ON sightings (batch, cursor);

CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    batch        INTEGER NOT NULL REFERENCES batches(id),
    sha256       TEXT NOT NULL,
    channel      TEXT NOT NULL,
    file_name    TEXT NOT NULL,
    -- a restart finishing the same claimed file records it once
    claim_name   TEXT UNIQUE,
    received_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE rejections (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    file_name     TEXT NOT NULL,
    stored_path   TEXT,
    claim_name    TEXT UNIQUE,
    device        TEXT,
    batch_id      TEXT,
    sha256        TEXT,
    channel       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    problems      TEXT NOT NULL DEFAULT '[]',
    received_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    status        TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX rejections_received_at ON rejections (received_at);
