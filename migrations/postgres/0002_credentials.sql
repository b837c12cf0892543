-- Per-device and administrator credentials. Device tokens are random and high-entropy,
-- so a SHA-256 of them is enough (and cheap per request); admin passwords are Argon2id.

ALTER TABLE devices ADD COLUMN token_hash TEXT UNIQUE;
ALTER TABLE devices ADD COLUMN registered_at TIMESTAMPTZ;
ALTER TABLE devices ADD COLUMN token_rotated_at TIMESTAMPTZ;
ALTER TABLE devices ADD COLUMN revoked_at TIMESTAMPTZ;

CREATE TABLE admins (
    id             BIGSERIAL PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE admin_tokens (
    id            BIGSERIAL PRIMARY KEY,
    admin_id      BIGINT NOT NULL REFERENCES admins(id),
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at    TIMESTAMPTZ
);
