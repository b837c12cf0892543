-- Track points (CyberTracker waypoints) and SMART patrol events, stored with the
-- batch that brought them. Neither is a sighting. Mirrors migrations/postgres.

-- A device is at one place at one time: the same point in a later batch adds nothing.
CREATE TABLE tracks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    batch        INTEGER NOT NULL REFERENCES batches(id),
    device_id    INTEGER NOT NULL REFERENCES devices(id),
    recorded_at  TEXT NOT NULL,
    latitude     REAL NOT NULL,
    longitude    REAL NOT NULL,
    altitude     REAL,
    accuracy     REAL,
    UNIQUE (device_id, recorded_at)
);

-- One row per patrol event, keyed by the feature's GUID: a piece of a patrol delivered
-- twice, or in another file, adds nothing. Patrols are these rows merged by patrol_id.
CREATE TABLE patrol_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_uid    TEXT NOT NULL UNIQUE,
    patrol_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    batch        INTEGER NOT NULL REFERENCES batches(id),
    device_id    INTEGER NOT NULL REFERENCES devices(id),
    occurred_at  TEXT NOT NULL,
    latitude     REAL NOT NULL,
    longitude    REAL NOT NULL,
    leg          INTEGER,
    attributes   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX patrol_events_patrol ON patrol_events (patrol_id, occurred_at);

-- Earlier versions of sightings that a newer one replaced (a CyberTracker webhook
-- sends an edited observation again with a newer updateTime): the replaced row, whole.
CREATE TABLE sighting_versions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sighting_id  TEXT NOT NULL,
    batch        INTEGER NOT NULL REFERENCES batches(id),
    version      TEXT,
    content      TEXT NOT NULL,
    replaced_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX sighting_versions_sighting ON sighting_versions (sighting_id);
