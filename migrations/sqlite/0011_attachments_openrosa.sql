-- Attachments and OpenRosa submissions. Mirrors migrations/postgres, which explains them.

CREATE TABLE attachments (
    sha256        TEXT PRIMARY KEY,
    size          INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    stored_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE attachment_links (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    batch        INTEGER NOT NULL REFERENCES batches(id),
    sighting_id  TEXT NOT NULL DEFAULT '',
    name         TEXT NOT NULL,
    sha256       TEXT NOT NULL REFERENCES attachments(sha256),
    linked_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (batch, sighting_id, name)
);
CREATE INDEX attachment_links_sighting ON attachment_links (sighting_id);
CREATE INDEX attachment_links_sha256 ON attachment_links (sha256);

CREATE TABLE openrosa_submissions (
    instance_id    TEXT PRIMARY KEY,
    device         TEXT NOT NULL,
    form_id        TEXT NOT NULL,
    form_version   TEXT,
    xml_sha256     TEXT NOT NULL REFERENCES attachments(sha256),
    batch          INTEGER NOT NULL REFERENCES batches(id),
    deprecated_id  TEXT,
    superseded_by  TEXT,
    received_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX openrosa_submissions_batch ON openrosa_submissions (batch);

CREATE TABLE openrosa_superseded_sightings (
    id              TEXT PRIMARY KEY,
    instance_id     TEXT NOT NULL,
    superseded_by   TEXT NOT NULL,
    batch           INTEGER NOT NULL REFERENCES batches(id),
    observed_at     TEXT NOT NULL,
    observed_offset INTEGER NOT NULL,
    latitude        REAL NOT NULL,
    longitude       REAL NOT NULL,
    altitude        REAL,
    accuracy        REAL,
    observer        TEXT,
    species         TEXT,
    count           INTEGER,
    attributes      TEXT NOT NULL,
    superseded_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
