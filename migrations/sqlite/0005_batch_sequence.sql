-- The device's running number of each batch (header `sequence`, optional), so batches
-- a device numbered but the server never received show up as gaps.
ALTER TABLE batches ADD COLUMN sequence BIGINT;
CREATE INDEX batches_device_sequence ON batches (device_id, sequence);
