-- Remote sources the server pulls from (see migrations/postgres/0003).

CREATE TABLE source_files (
    source        TEXT NOT NULL,
    remote_path   TEXT NOT NULL,
    size          INTEGER NOT NULL,
    modified      TEXT NOT NULL,
    sha256        TEXT,
    outcome       TEXT NOT NULL,
    handled_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (source, remote_path)
);

CREATE TABLE source_pulls (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT NOT NULL,
    trigger       TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    finished_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    found         INTEGER NOT NULL,
    fetched       INTEGER NOT NULL,
    ingested      INTEGER NOT NULL,
    duplicates    INTEGER NOT NULL,
    rejected      INTEGER NOT NULL,
    errors        INTEGER NOT NULL,
    result        TEXT NOT NULL,
    error         TEXT
);
CREATE INDEX source_pulls_source ON source_pulls (source, id);
