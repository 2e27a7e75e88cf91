-- The audit log: an append-only Merkle tree in the style of RFC 6962. Each record's leaf hash is
-- SHA-256(0x00 || seq as 8 bytes big-endian || body); `audit_head` keeps the tree's size and its
-- right edge (the roots of its perfect subtrees), so appending and computing the root cost
-- O(log n). Checkpoints are the root at a size, signed (ed25519) by a node's audit key.
-- Retention clears old bodies and keeps their leaf hashes, so the tree stays verifiable.
CREATE TABLE audit_log (
    seq        BIGINT  NOT NULL PRIMARY KEY,
    at         BIGINT  NOT NULL,
    body       TEXT,
    leaf_hash  TEXT    NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TABLE audit_head (
    id        BIGINT  NOT NULL PRIMARY KEY,
    size      BIGINT  NOT NULL,
    frontier  TEXT    NOT NULL
);
INSERT INTO audit_head (id, size, frontier) VALUES (0, 0, '[]');

CREATE TABLE audit_checkpoints (
    size       BIGINT  NOT NULL PRIMARY KEY,
    root       TEXT    NOT NULL,
    at         BIGINT  NOT NULL,
    key_id     TEXT    NOT NULL,
    signature  TEXT    NOT NULL
);
