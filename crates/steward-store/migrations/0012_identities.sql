-- Key lifecycle: keys may expire (short-lived credentials) and are revoked with a reason.
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE api_keys ADD COLUMN revoke_reason TEXT;

-- An agent's identity: who owns it and whether it may act. No row: active, no owner recorded.
CREATE TABLE identities (
    agent       TEXT    NOT NULL PRIMARY KEY,
    owner       TEXT,
    status      TEXT    NOT NULL,
    reason      TEXT,
    updated_at  BIGINT  NOT NULL
);
