-- The audit chain's keying: from record `keyed_from` on, each record's hash is an HMAC-SHA256
-- under the CA's audit key (`audit.key` in its data dir), whose id (not the key) is `key_id`.
-- NULL until the chain is keyed; a CA whose key file does not match refuses to start.
ALTER TABLE audit_head ADD COLUMN keyed_from BIGINT;
ALTER TABLE audit_head ADD COLUMN key_id TEXT;
