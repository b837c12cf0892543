-- API tokens keep their first characters, so an administrator can tell them apart
-- and revoke one (`admin token NAME --revoke PREFIX`). Older tokens have none.
ALTER TABLE admin_tokens ADD COLUMN token_prefix TEXT;

-- Device names are unique in any letter case among registered devices: the name is
-- also a folder and an FTP login, and two devices that differ only in case are one
-- folder on a case-insensitive share. Devices that already differ only in case keep
-- working (deleting or renaming one would orphan its data and its field client): all
-- but the oldest of each such group get their own id in case_twin, which keeps them
-- apart in the index, while every device registered from now on has 0 there.
ALTER TABLE devices ADD COLUMN case_twin INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET case_twin = id
WHERE token_hash IS NOT NULL AND EXISTS (
    SELECT 1 FROM devices o
    WHERE o.token_hash IS NOT NULL AND lower(o.name) = lower(devices.name) AND o.id < devices.id
);
CREATE UNIQUE INDEX devices_registered_name_any_case ON devices (lower(name), case_twin)
WHERE token_hash IS NOT NULL;
