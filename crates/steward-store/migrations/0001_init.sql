-- Agents are versioned: apply with a changed spec adds a version; runs keep theirs.
CREATE TABLE agents (
    name        TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    spec        TEXT    NOT NULL,
    spec_hash   TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE runs (
    id             TEXT    NOT NULL PRIMARY KEY,
    agent          TEXT    NOT NULL,
    agent_version  BIGINT  NOT NULL,
    parent_id      TEXT,
    input          TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    wait_kind      TEXT,
    result         TEXT,
    error_code     TEXT,
    error_message  TEXT,
    cancel_reason  TEXT,
    retry_seq      BIGINT,
    lease_owner    TEXT,
    lease_expires  BIGINT,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    FOREIGN KEY (agent, agent_version) REFERENCES agents (name, version)
);
CREATE INDEX runs_claimable ON runs (state, lease_expires);
CREATE INDEX runs_parent ON runs (parent_id);
CREATE INDEX runs_agent ON runs (agent, created_at);

-- The journal: an intent (phase 0) is durable before the step acts; its outcome (phase 1) after.
-- The primary key doubles as fencing: two writers can never record the same step twice.
CREATE TABLE journal (
    run_id           TEXT    NOT NULL,
    seq              BIGINT  NOT NULL,
    phase            BIGINT  NOT NULL,
    kind             TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    request_hash     TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    ok               BIGINT  NOT NULL,
    tokens_in        BIGINT  NOT NULL,
    tokens_out       BIGINT  NOT NULL,
    at               BIGINT  NOT NULL,
    duration_us      BIGINT  NOT NULL,
    PRIMARY KEY (run_id, seq, phase)
);

CREATE TABLE scratchpad (
    run_id      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (run_id, key)
);
