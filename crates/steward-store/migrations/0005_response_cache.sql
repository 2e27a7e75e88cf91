-- Exact-match response cache for gateway routes that opt in; shared by every node.
CREATE TABLE response_cache (
    cache_key   TEXT    NOT NULL PRIMARY KEY,
    body        TEXT    NOT NULL,
    deployment  TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL
);
