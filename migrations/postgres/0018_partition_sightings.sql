-- Sightings partitioned by month of ARRIVAL (a new column `received_at`, the time of
-- the transaction that stored the row), not by month of `observed_at`. Why arrival:
--
-- * The export cursor reads in arrival order (`cursor` comes from a sequence as rows
--   are stored) and must never skip a late commit. Arrival months are disjoint,
--   increasing ranges of cursors, so "everything after cursor N" touches the newest
--   partitions only in substance; with observed months every export page would have
--   to look into every month a late device ever wrote to.
-- * Devices send old sightings late (days or months offline, clocks set to 1970 or
--   2099). By observed month such a row would be written into a long-closed partition,
--   or one that does not exist yet; by arrival month every insert goes into the
--   current partition, whose indexes are small and hot: ingest speed does not fall as
--   the table grows, and closed months can be vacuumed, frozen, moved or detached.
-- * The partition key is the server's clock, so the months ahead are known and made
--   before they are needed; a row never waits for a partition to be created.
--
-- Sighting ids stay unique across all partitions through `sighting_ids`, one row per
-- stored sighting, kept by statement-level triggers on `sightings` (a unique index on
-- a partitioned table has to include the partition key). Duplicates and versions are
-- still found by id: every partition has an index on `id`.
--
-- A month with no partition yet goes to `sightings_default`, so no ingest ever fails
-- for want of a partition. `ctdata_sighting_partitions` (called by the server at start
-- and every hour) makes the partitions of this month and the next ones, moving any rows
-- of such a month out of the default partition in the same transaction.
--
-- This migration runs in one transaction: the existing rows move into their monthly
-- partitions (the month their batch arrived) or nothing changes.

CREATE TABLE sighting_ids (
    id UUID PRIMARY KEY
);

-- The old table keeps its data until it is copied; its names are freed for the new one.
ALTER SEQUENCE sightings_cursor_seq OWNED BY NONE;
ALTER TABLE sightings RENAME TO sightings_0017;
ALTER INDEX sightings_pkey RENAME TO sightings_0017_pkey;
ALTER INDEX sightings_id_key RENAME TO sightings_0017_id_key;
ALTER INDEX sightings_observed_at RENAME TO sightings_0017_observed_at;
ALTER INDEX sightings_device RENAME TO sightings_0017_device;
ALTER INDEX sightings_species RENAME TO sightings_0017_species;
ALTER INDEX sightings_batch RENAME TO sightings_0017_batch;

CREATE TABLE sightings (
    cursor       BIGINT NOT NULL DEFAULT nextval('sightings_cursor_seq'),
    id           UUID NOT NULL,
    batch        BIGINT NOT NULL REFERENCES batches(id),
    device_id    BIGINT NOT NULL REFERENCES devices(id),
    observed_at  TIMESTAMPTZ NOT NULL,
    observed_offset INTEGER NOT NULL DEFAULT 0,
    latitude     DOUBLE PRECISION NOT NULL,
    longitude    DOUBLE PRECISION NOT NULL,
    altitude     DOUBLE PRECISION,
    accuracy     DOUBLE PRECISION,
    observer     TEXT,
    species      TEXT,
    count        BIGINT,
    attributes   JSONB NOT NULL DEFAULT '{}',
    -- when the row was stored: the partition key
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (cursor, received_at)
) PARTITION BY RANGE (received_at);
ALTER SEQUENCE sightings_cursor_seq OWNED BY sightings.cursor;

CREATE INDEX sightings_id ON sightings (id);
CREATE INDEX sightings_observed_at ON sightings (observed_at);
CREATE INDEX sightings_device ON sightings (device_id, cursor);
CREATE INDEX sightings_species ON sightings (species, cursor);
CREATE INDEX sightings_batch ON sightings (batch, cursor);
-- Bounding boxes (dashboard map, export bbox): a range of latitudes, longitudes checked
-- in the index. Plain columns, so the same query runs on SQLite.
CREATE INDEX sightings_lat_lon ON sightings (latitude, longitude);

CREATE TABLE sightings_default PARTITION OF sightings DEFAULT;

-- Keeps `sighting_ids` in step: an id stored twice fails the statement with a
-- unique_violation on sighting_ids, as it failed on sightings before.
CREATE FUNCTION ctdata_sighting_ids_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sighting_ids (id) SELECT id FROM new_rows;
    RETURN NULL;
END;
$$;
CREATE FUNCTION ctdata_sighting_ids_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sighting_ids k USING old_rows o WHERE k.id = o.id;
    RETURN NULL;
END;
$$;
CREATE FUNCTION ctdata_sighting_ids_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sighting_ids k
    USING (SELECT id FROM old_rows EXCEPT SELECT id FROM new_rows) o WHERE k.id = o.id;
    INSERT INTO sighting_ids (id) SELECT id FROM new_rows EXCEPT SELECT id FROM old_rows;
    RETURN NULL;
END;
$$;
CREATE TRIGGER sightings_ids_insert AFTER INSERT ON sightings
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION ctdata_sighting_ids_insert();
CREATE TRIGGER sightings_ids_delete AFTER DELETE ON sightings
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION ctdata_sighting_ids_delete();
CREATE TRIGGER sightings_ids_update AFTER UPDATE ON sightings
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION ctdata_sighting_ids_update();

-- Makes the monthly partitions from the month of p_from through the month of p_to that
-- are missing; rows of such a month already in the default partition move into it in
-- the same transaction. Returns how many partitions it made. One caller at a time
-- (an advisory lock; a second caller returns 0 at once), and it gives up rather than
-- queue behind a long export: the lock it needs on `sightings` would hold up every
-- ingest queued behind it. Statements on a partition itself do not fire the triggers
-- on `sightings`, so moved rows keep their ids in sighting_ids.
CREATE FUNCTION ctdata_sighting_partitions(p_from timestamptz, p_to timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_month timestamptz := date_trunc('month', p_from, 'UTC');
    v_next timestamptz;
    v_name text;
    v_made integer := 0;
    v_timeout text := current_setting('lock_timeout');
BEGIN
    IF NOT pg_try_advisory_xact_lock(7220180001) THEN
        RETURN 0;
    END IF;
    PERFORM set_config('lock_timeout', '2s', true);
    WHILE v_month <= p_to LOOP
        v_next := v_month + interval '1 month';
        v_name := 'sightings_' || to_char(v_month AT TIME ZONE 'UTC', '"y"YYYY"m"MM');
        IF to_regclass(v_name) IS NULL THEN
            IF EXISTS (SELECT 1 FROM sightings_default
                       WHERE received_at >= v_month AND received_at < v_next) THEN
                EXECUTE format('CREATE TABLE %I (LIKE sightings INCLUDING DEFAULTS)', v_name);
                EXECUTE format('WITH moved AS (DELETE FROM sightings_default WHERE received_at >= $1 '
                               'AND received_at < $2 RETURNING *) INSERT INTO %I SELECT * FROM moved',
                               v_name) USING v_month, v_next;
                EXECUTE format('ALTER TABLE sightings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               v_name, v_month, v_next);
            ELSE
                EXECUTE format('CREATE TABLE %I PARTITION OF sightings FOR VALUES FROM (%L) TO (%L)',
                               v_name, v_month, v_next);
            END IF;
            v_made := v_made + 1;
        END IF;
        v_month := v_next;
    END LOOP;
    PERFORM set_config('lock_timeout', v_timeout, true);
    RETURN v_made;
END;
$$;

-- The months the stored rows arrived in, this month and the next two.
SELECT ctdata_sighting_partitions(m, m)
FROM (SELECT DISTINCT date_trunc('month', received_at, 'UTC') AS m FROM batches) months;
SELECT ctdata_sighting_partitions(now(), now() + interval '2 months');

-- The ids first, then the rows with the trigger off (it would add each id again).
INSERT INTO sighting_ids (id) SELECT id FROM sightings_0017;
ALTER TABLE sightings DISABLE TRIGGER sightings_ids_insert;
INSERT INTO sightings (cursor, id, batch, device_id, observed_at, observed_offset, latitude,
                       longitude, altitude, accuracy, observer, species, count, attributes,
                       received_at)
SELECT s.cursor, s.id, s.batch, s.device_id, s.observed_at, s.observed_offset, s.latitude,
       s.longitude, s.altitude, s.accuracy, s.observer, s.species, s.count, s.attributes,
       b.received_at
FROM sightings_0017 s JOIN batches b ON b.id = s.batch
ORDER BY s.cursor;
ALTER TABLE sightings ENABLE TRIGGER sightings_ids_insert;
DROP TABLE sightings_0017;
ANALYZE sightings;
