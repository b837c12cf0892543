-- Per-device and administrator credentials (see migrations/postgres/0002).

ALTER TABLE devices ADD COLUMN token_hash TEXT;
ALTER TABLE devices ADD COLUMN registered_at TEXT;
ALTER TABLE devices ADD COLUMN token_rotated_at TEXT;
ALTER TABLE devices ADD COLUMN revoked_at TEXT;
CREATE UNIQUE INDEX devices_token_hash ON devices (token_hash);

CREATE TABLE admins (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE admin_tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    admin_id      INTEGER NOT NULL REFERENCES admins(id),
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at    TEXT
);
