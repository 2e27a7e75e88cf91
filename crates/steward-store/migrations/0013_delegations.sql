-- Keys every node shares (sealed with the vault key): the first node to need one creates it.
CREATE TABLE signing_keys (
    name        TEXT    NOT NULL PRIMARY KEY,
    sealed      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);

-- Delegated credentials, one row per link: a token block Steward signed for `holder`, minted by
-- `issuer` under the link above (`parent_id`; none for the first hop, minted with an API key).
-- `revocation_id` is the block's signature: a presented token's blocks are found by it, so a
-- block nobody here minted is never taken for a link. `scope` is the link's effective scope
-- (JSON), never wider than its parent's.
CREATE TABLE delegations (
    id             TEXT    NOT NULL PRIMARY KEY,
    parent_id      TEXT,
    revocation_id  TEXT    NOT NULL UNIQUE,
    issuer         TEXT    NOT NULL,
    holder         TEXT    NOT NULL,
    key_id         TEXT,
    scope          TEXT    NOT NULL,
    expires_at     BIGINT  NOT NULL,
    created_at     BIGINT  NOT NULL,
    revoked_at     BIGINT,
    revoke_reason  TEXT
);
CREATE INDEX delegations_parent ON delegations (parent_id);
