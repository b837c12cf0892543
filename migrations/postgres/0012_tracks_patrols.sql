-- Track points (CyberTracker waypoints) and SMART patrol events, stored with the
-- batch that brought them. Neither is a sighting.

-- A device is at one place at one time: the same point in a later batch adds nothing.
CREATE TABLE tracks (
    id           BIGSERIAL PRIMARY KEY,
    batch        BIGINT NOT NULL REFERENCES batches(id),
    device_id    BIGINT NOT NULL REFERENCES devices(id),
    recorded_at  TIMESTAMPTZ NOT NULL,
    latitude     DOUBLE PRECISION NOT NULL,
    longitude    DOUBLE PRECISION NOT NULL,
    altitude     DOUBLE PRECISION,
    accuracy     DOUBLE PRECISION,
    UNIQUE (device_id, recorded_at)
);

-- One row per patrol event, keyed by the feature's GUID: a piece of a patrol delivered
-- twice, or in another file, adds nothing. Patrols are these rows merged by patrol_id.
CREATE TABLE patrol_events (
    id           BIGSERIAL PRIMARY KEY,
    event_uid    UUID NOT NULL UNIQUE,
    patrol_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    batch        BIGINT NOT NULL REFERENCES batches(id),
    device_id    BIGINT NOT NULL REFERENCES devices(id),
    occurred_at  TIMESTAMPTZ NOT NULL,
    latitude     DOUBLE PRECISION NOT NULL,
    longitude    DOUBLE PRECISION NOT NULL,
    leg          BIGINT,
    attributes   JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX patrol_events_patrol ON patrol_events (patrol_id, occurred_at);

-- Earlier versions of sightings that a newer one replaced (a CyberTracker webhook
-- sends an edited observation again with a newer updateTime): the replaced row, whole.
CREATE TABLE sighting_versions (
    id           BIGSERIAL PRIMARY KEY,
    sighting_id  UUID NOT NULL,
    batch        BIGINT NOT NULL REFERENCES batches(id),
    version      TEXT,
    content      JSONB NOT NULL,
    replaced_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sighting_versions_sighting ON sighting_versions (sighting_id);
