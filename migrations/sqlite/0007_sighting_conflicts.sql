-- A sighting id that arrived again with other content. Mirrors migrations/postgres.
CREATE TABLE sighting_conflicts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    sighting_id     TEXT NOT NULL,
    stored_batch    INTEGER NOT NULL REFERENCES batches(id),
    new_batch       INTEGER NOT NULL REFERENCES batches(id),
    fields          TEXT NOT NULL,
    observed_at     TEXT NOT NULL,
    observed_offset INTEGER NOT NULL DEFAULT 0,
    latitude        REAL NOT NULL,
    longitude       REAL NOT NULL,
    altitude        REAL,
    accuracy        REAL,
    observer        TEXT,
    species         TEXT,
    count           INTEGER,
    attributes      TEXT NOT NULL DEFAULT '{}',
    detected_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX sighting_conflicts_new_batch ON sighting_conflicts (new_batch);

CREATE TABLE skipped_sightings (
    batch        INTEGER NOT NULL REFERENCES batches(id),
    ord          INTEGER NOT NULL,
    sighting_id  TEXT NOT NULL,
    PRIMARY KEY (batch, ord)
);
