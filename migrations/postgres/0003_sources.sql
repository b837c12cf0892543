-- Remote sources (FTP sites, shares) the server pulls from.
--
-- source_files: remote files whose ingest committed, so that a `keep` source does not
-- fetch an unchanged file again, and a delete/move that failed is retried without
-- downloading again. A file is the same while its path, size and modification time are.
CREATE TABLE source_files (
    source        TEXT NOT NULL,
    remote_path   TEXT NOT NULL,
    size          BIGINT NOT NULL,
    modified      TEXT NOT NULL,
    sha256        TEXT,
    outcome       TEXT NOT NULL,
    handled_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, remote_path)
);

-- One row per pull of a source: what it found and did, and the first error in words.
CREATE TABLE source_pulls (
    id            BIGSERIAL PRIMARY KEY,
    source        TEXT NOT NULL,
    trigger       TEXT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    found         BIGINT NOT NULL,
    fetched       BIGINT NOT NULL,
    ingested      BIGINT NOT NULL,
    duplicates    BIGINT NOT NULL,
    rejected      BIGINT NOT NULL,
    errors        BIGINT NOT NULL,
    result        TEXT NOT NULL,
    error         TEXT
);
CREATE INDEX source_pulls_source ON source_pulls (source, id);
