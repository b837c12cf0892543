-- Attachments (photos, audio, signatures) stored once by content, and the OpenRosa
-- submissions (ODK Collect, KoboCollect, the CyberTracker app) they mostly come with.
-- Mirrors migrations/sqlite.

-- One row per stored file; the file itself lives at <attachments_dir>/ab/cd/<sha256>.
CREATE TABLE attachments (
    sha256        TEXT PRIMARY KEY,
    size          BIGINT NOT NULL,
    content_type  TEXT NOT NULL,
    stored_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A file as a batch names it. sighting_id '' links it to the whole batch (every
-- sighting in it); otherwise to that one sighting.
CREATE TABLE attachment_links (
    id           BIGSERIAL PRIMARY KEY,
    batch        BIGINT NOT NULL REFERENCES batches(id),
    sighting_id  TEXT NOT NULL DEFAULT '',
    name         TEXT NOT NULL,
    sha256       TEXT NOT NULL REFERENCES attachments(sha256),
    linked_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (batch, sighting_id, name)
);
CREATE INDEX attachment_links_sighting ON attachment_links (sighting_id);
CREATE INDEX attachment_links_sha256 ON attachment_links (sha256);

-- One row per OpenRosa instanceID. The raw XML is an attachment (xml_sha256), so a
-- corrected form mapping can be run over it again.
CREATE TABLE openrosa_submissions (
    instance_id    TEXT PRIMARY KEY,
    device         TEXT NOT NULL,
    form_id        TEXT NOT NULL,
    form_version   TEXT,
    xml_sha256     TEXT NOT NULL REFERENCES attachments(sha256),
    batch          BIGINT NOT NULL REFERENCES batches(id),
    deprecated_id  TEXT,
    superseded_by  TEXT,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX openrosa_submissions_batch ON openrosa_submissions (batch);

-- The sightings of a submission an edit (deprecatedID) replaced, as they were.
CREATE TABLE openrosa_superseded_sightings (
    id              UUID PRIMARY KEY,
    instance_id     TEXT NOT NULL,
    superseded_by   TEXT NOT NULL,
    batch           BIGINT NOT NULL REFERENCES batches(id),
    observed_at     TIMESTAMPTZ NOT NULL,
    observed_offset INTEGER NOT NULL,
    latitude        DOUBLE PRECISION NOT NULL,
    longitude       DOUBLE PRECISION NOT NULL,
    altitude        DOUBLE PRECISION,
    accuracy        DOUBLE PRECISION,
    observer        TEXT,
    species         TEXT,
    count           BIGINT,
    attributes      JSONB NOT NULL,
    superseded_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
