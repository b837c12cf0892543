-- CTData schema, PostgreSQL. Released migrations are never edited: add a new file.

CREATE TABLE devices (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at  TIMESTAMPTZ
);

-- One row per batch that was ingested. (device, batch_id) is the idempotency key.
CREATE TABLE batches (
    id             BIGSERIAL PRIMARY KEY,
    device_id      BIGINT NOT NULL REFERENCES devices(id),
    batch_id       UUID NOT NULL,
    sha256         TEXT NOT NULL,
    format         TEXT NOT NULL,
    channel        TEXT NOT NULL,
    file_name      TEXT NOT NULL,
    claim_name     TEXT,
    created_at     TIMESTAMPTZ,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    row_count      BIGINT NOT NULL,
    inserted       BIGINT NOT NULL,
    duplicates     BIGINT NOT NULL,
    cursor_first   BIGINT,
    cursor_last    BIGINT,
    UNIQUE (device_id, batch_id)
);
CREATE INDEX batches_received_at ON batches (received_at);

-- `cursor` is assigned in commit order (ingest transactions are serialised), so
-- "everything after cursor N" never skips a row that committed late.
CREATE TABLE sightings (
    cursor       BIGSERIAL PRIMARY KEY,
    id           UUID NOT NULL UNIQUE,
    batch        BIGINT NOT NULL REFERENCES batches(id),
    device_id    BIGINT NOT NULL REFERENCES devices(id),
    observed_at  TIMESTAMPTZ NOT NULL,
    -- the offset the device recorded, in seconds east of UTC, so exports keep local time
    observed_offset INTEGER NOT NULL DEFAULT 0,
    latitude     DOUBLE PRECISION NOT NULL,
    longitude    DOUBLE PRECISION NOT NULL,
    altitude     DOUBLE PRECISION,
    accuracy     DOUBLE PRECISION,
    observer     TEXT,
    species      TEXT,
    count        BIGINT,
    attributes   JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX sightings_observed_at ON sightings (observed_at);
CREATE INDEX sightings_device ON sightings (device_id, cursor);
CREATE INDEX sightings_species ON sightings (species, cursor);
CREATE INDEX sightings_batch ON sightings (batch, cursor);

-- Every delivery that added nothing: the same batch again, or a conflict.
CREATE TABLE deliveries (
    id           BIGSERIAL PRIMARY KEY,
    batch        BIGINT NOT NULL REFERENCES batches(id),
    sha256       TEXT NOT NULL,
    channel      TEXT NOT NULL,
    file_name    TEXT NOT NULL,
    -- a restart finishing the same claimed file records it once
    claim_name   TEXT UNIQUE,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Files refused as a whole. claim_name makes re-running a half-finished rejection
-- (crash between this insert and the move to rejected/) idempotent.
CREATE TABLE rejections (
    id            BIGSERIAL PRIMARY KEY,
    file_name     TEXT NOT NULL,
    stored_path   TEXT,
    claim_name    TEXT UNIQUE,
    device        TEXT,
    batch_id      UUID,
    sha256        TEXT,
    channel       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    problems      JSONB NOT NULL DEFAULT '[]',
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    status        TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX rejections_received_at ON rejections (received_at);
