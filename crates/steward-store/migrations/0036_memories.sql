-- Agent memory. One row per version of a fact: nothing is overwritten. A version is true in the
-- world from `valid_from` until `valid_to` (NULL: still), and was the current record from
-- `created_at` until `expired_at` (NULL: still), when `superseded_by` replaced it. Versions of
-- one fact share `lineage` (the first version's id). `scope` is whose it is: `org`,
-- `user:<id>`, `agent:<name>`, `run:<id>` or `collection:<name>`. `tags` a JSON array,
-- `metadata` a JSON object kept as given, `source` JSON provenance (the message it came from).
-- `updated_at` moves on every change, so other nodes' indexes follow.
CREATE TABLE memories (
    id            TEXT   NOT NULL PRIMARY KEY,
    lineage       TEXT   NOT NULL,
    scope         TEXT   NOT NULL,
    text          TEXT   NOT NULL,
    subject       TEXT,
    tags          TEXT   NOT NULL,
    metadata      TEXT   NOT NULL,
    source        TEXT,
    written_by    TEXT   NOT NULL,
    valid_from    BIGINT NOT NULL,
    valid_to      BIGINT,
    created_at    BIGINT NOT NULL,
    expired_at    BIGINT,
    superseded_by TEXT,
    expires_at    BIGINT,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX memories_lineage ON memories (lineage);
CREATE INDEX memories_scope ON memories (scope, subject);
CREATE INDEX memories_updated ON memories (updated_at, id);
CREATE INDEX memories_expires ON memories (expires_at);

-- What was erased: ids only, never content, so every node drops them from its index too.
CREATE TABLE memory_erasures (
    id        TEXT   NOT NULL PRIMARY KEY,
    erased_at BIGINT NOT NULL
);
CREATE INDEX memory_erasures_at ON memory_erasures (erased_at);
