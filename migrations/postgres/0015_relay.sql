-- Send on sync: a station device may relay batches recorded by other devices.
-- devices.relay_for: NULL (relays for nobody), '*' (any device), or a comma-separated
-- list of device names. batches.relayed_by: the device that delivered a relayed batch.
ALTER TABLE devices ADD COLUMN relay_for TEXT;
ALTER TABLE batches ADD COLUMN relayed_by TEXT;
