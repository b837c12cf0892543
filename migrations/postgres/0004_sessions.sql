-- Dashboard sign-ins. Only the SHA-256 of the cookie's token is stored, so a copy of
-- the database signs nobody in. expires_at is in Unix seconds, compared by the server
-- (the same on both backends).
CREATE TABLE sessions (
    token_hash    TEXT PRIMARY KEY,
    admin         TEXT NOT NULL,
    csrf          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
