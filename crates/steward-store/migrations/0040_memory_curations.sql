-- Curation of memories by a model: one row per request, worked through by any node. The
-- model's reply is kept as soon as it comes (so a node that dies after paying for it never
-- asks again), then its decisions are applied under ids made from the row's, so applying
-- again writes nothing twice. `state`: queued, running (leased until `lease_until`), done,
-- failed.
CREATE TABLE memory_curations (
    id           TEXT   NOT NULL PRIMARY KEY,
    scope        TEXT   NOT NULL,
    requested_by TEXT   NOT NULL,
    input        TEXT   NOT NULL,
    state        TEXT   NOT NULL,
    attempts     BIGINT NOT NULL,
    lease_until  BIGINT NOT NULL,
    prompt       TEXT   NOT NULL,
    model        TEXT   NOT NULL,
    reply        TEXT,
    cost_nanos   BIGINT NOT NULL,
    result       TEXT,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX memory_curations_state ON memory_curations (state, lease_until);
