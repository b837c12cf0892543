-- A sighting id that arrived again with other content: the sighting stored first stays,
-- the new version is kept here (the same columns as sightings) for the administrator,
-- with the batches on both sides and the fields that differ (comma-separated).
CREATE TABLE sighting_conflicts (
    id              BIGSERIAL PRIMARY KEY,
    sighting_id     UUID NOT NULL,
    stored_batch    BIGINT NOT NULL REFERENCES batches(id),
    new_batch       BIGINT NOT NULL REFERENCES batches(id),
    fields          TEXT NOT NULL,
    observed_at     TIMESTAMPTZ NOT NULL,
    observed_offset INTEGER NOT NULL DEFAULT 0,
    latitude        DOUBLE PRECISION NOT NULL,
    longitude       DOUBLE PRECISION NOT NULL,
    altitude        DOUBLE PRECISION,
    accuracy        DOUBLE PRECISION,
    observer        TEXT,
    species         TEXT,
    count           BIGINT,
    attributes      JSONB NOT NULL DEFAULT '{}',
    detected_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sighting_conflicts_new_batch ON sighting_conflicts (new_batch);

-- The first sighting ids a batch skipped because they were stored already (at most
-- a hundred a batch; batches.duplicates has the count), for receipts and the batch API.
CREATE TABLE skipped_sightings (
    batch        BIGINT NOT NULL REFERENCES batches(id),
    ord          BIGINT NOT NULL,
    sighting_id  UUID NOT NULL,
    PRIMARY KEY (batch, ord)
);
