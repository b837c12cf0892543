-- One small batch stored in one round trip: the server calls this in autocommit mode for
-- a file of at most a few thousand sightings (larger files go through COPY). It does what
-- the COPY path does in five: registers the load for safe cursors (the same advisory key
-- as the COPY path), finds or adds the device, inserts the sightings and the batch row
-- with its counts and cursor range, and marks the device seen (at most once a second:
-- a busy device does not rewrite its row for every batch). Returns no row when the
-- device already has a batch with this id. A unique_violation means either a concurrent
-- delivery of the same batch committed first (on batches; the caller reads the stored
-- batch) or a sighting id is stored already (on sightings; the caller takes the COPY path
-- through a staging table, which skips and counts such ids). The caller has refused
-- files that repeat an id.
CREATE FUNCTION ctdata_load(
    p_device text, p_batch_id uuid, p_sha256 text, p_format text, p_channel text,
    p_file_name text, p_claim_name text, p_created_at timestamptz, p_sequence bigint,
    p_ids uuid[], p_observed_at text[], p_offsets integer[], p_latitudes float8[],
    p_longitudes float8[], p_altitudes float8[], p_accuracies float8[], p_observers text[],
    p_species text[], p_counts bigint[], p_attributes text[]
) RETURNS TABLE (batch bigint, device bigint, received_at timestamptz, inserted bigint,
                 cursor_first bigint, cursor_last bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_device bigint;
    v_batch bigint;
    v_rows bigint := coalesce(array_length(p_ids, 1), 0);
BEGIN
    -- Register before any cursor is taken (see safe_cursor in the server).
    PERFORM pg_advisory_xact_lock_shared((1::bigint << 62)
        + (CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END))
    FROM sightings_cursor_seq s;

    SELECT d.id INTO v_device FROM devices d WHERE d.name = p_device;
    IF v_device IS NULL THEN
        INSERT INTO devices (name) VALUES (p_device) ON CONFLICT (name) DO NOTHING
        RETURNING devices.id INTO v_device;
        IF v_device IS NULL THEN
            SELECT d.id INTO v_device FROM devices d WHERE d.name = p_device;
        END IF;
    END IF;

    IF EXISTS (SELECT 1 FROM batches b WHERE b.device_id = v_device AND b.batch_id = p_batch_id) THEN
        RETURN;
    END IF;

    v_batch := nextval('batches_id_seq');
    -- The sightings reference the batch row inserted by the same statement: foreign
    -- keys are checked at its end, when both are there. A plain insert: cheaper than
    -- ON CONFLICT, and a stored id is the rare case the staging path is for.
    RETURN QUERY
    WITH s AS (
        INSERT INTO sightings (id, batch, device_id, observed_at, observed_offset, latitude,
                               longitude, altitude, accuracy, observer, species, count, attributes)
        SELECT r.id, v_batch, v_device, r.at::timestamptz, r.off, r.lat, r.lon, r.alt, r.acc,
               r.obs, r.sp, r.n, r.attrs::jsonb
        FROM unnest(p_ids, p_observed_at, p_offsets, p_latitudes, p_longitudes, p_altitudes,
                    p_accuracies, p_observers, p_species, p_counts, p_attributes)
             AS r(id, at, off, lat, lon, alt, acc, obs, sp, n, attrs)
        RETURNING sightings.cursor
    ), c AS (
        SELECT count(*) AS n, min(s.cursor) AS lo, max(s.cursor) AS hi FROM s
    )
    INSERT INTO batches AS b (id, device_id, batch_id, sha256, format, channel, file_name,
                              claim_name, created_at, sequence, row_count, inserted, duplicates,
                              cursor_first, cursor_last)
    SELECT v_batch, v_device, p_batch_id, p_sha256, p_format, p_channel, p_file_name,
           p_claim_name, p_created_at, p_sequence, v_rows, c.n, v_rows - c.n, c.lo, c.hi
    FROM c
    RETURNING b.id, b.device_id, b.received_at, b.inserted, b.cursor_first, b.cursor_last;

    UPDATE devices SET last_seen_at = now()
    WHERE id = v_device AND (last_seen_at IS NULL OR last_seen_at < now() - interval '1 second');
END;
$$;
