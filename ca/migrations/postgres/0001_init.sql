-- Warden CA datastore, PostgreSQL. Times are unix seconds (BIGINT); lists are JSON arrays (TEXT).

CREATE TABLE entries (
    id              TEXT PRIMARY KEY NOT NULL,
    spiffe_id       TEXT NOT NULL,
    parent_id       TEXT NOT NULL,
    -- JSON array of `type:key:value`, sorted and deduplicated.
    selectors       TEXT NOT NULL,
    x509_svid_ttl   BIGINT NOT NULL,
    jwt_svid_ttl    BIGINT NOT NULL,
    dns_names       TEXT NOT NULL,
    federates_with  TEXT NOT NULL,
    hint            TEXT NOT NULL,
    revision        BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (spiffe_id, parent_id, selectors)
);
CREATE INDEX entries_parent_id ON entries (parent_id);

CREATE TABLE join_tokens (
    -- Hex SHA-256 of the token; the token itself is never stored.
    token_hash  TEXT PRIMARY KEY NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT
);

CREATE TABLE agents (
    spiffe_id    TEXT PRIMARY KEY NOT NULL,
    attestor     TEXT NOT NULL,
    selectors    TEXT NOT NULL,
    serial       TEXT NOT NULL,
    expires_at   BIGINT NOT NULL,
    banned       BOOLEAN NOT NULL,
    attested_at  BIGINT NOT NULL,
    renewed_at   BIGINT NOT NULL
);

CREATE TABLE bundles (
    trust_domain  TEXT PRIMARY KEY NOT NULL,
    jwks          TEXT NOT NULL,
    sequence      BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE ca_records (
    id          TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    der         BYTEA NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    state       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE issued_svids (
    serial     TEXT PRIMARY KEY NOT NULL,
    spiffe_id  TEXT NOT NULL,
    entry_id   TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX issued_svids_spiffe_id ON issued_svids (spiffe_id);

-- Append-only, hash-chained: hash = SHA-256(previous hash || canonical(seq, at, kind, actor, subject, detail)).
CREATE TABLE audit_log (
    seq      BIGINT PRIMARY KEY NOT NULL,
    at       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    actor    TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT NOT NULL,
    hash     TEXT NOT NULL
);

-- The chain head: one row, locked (SELECT ... FOR UPDATE) and updated in the same transaction as
-- every append, so that CA replicas sharing this database append one after another and never fork.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
