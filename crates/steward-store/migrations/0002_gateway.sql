-- API keys identify external agents on the OpenAI-compatible gateway. Only a hash is kept.
CREATE TABLE api_keys (
    id          TEXT    NOT NULL PRIMARY KEY,
    key_hash    TEXT    NOT NULL UNIQUE,
    agent       TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    revoked_at  BIGINT
);

-- Every gateway call: recorded as started before the upstream is asked, finished after.
CREATE TABLE gateway_calls (
    id           TEXT    NOT NULL PRIMARY KEY,
    agent        TEXT    NOT NULL,
    run_id       TEXT,
    model        TEXT    NOT NULL,
    deployment   TEXT,
    status       TEXT    NOT NULL,
    error        TEXT,
    stream       BIGINT  NOT NULL,
    tokens_in    BIGINT  NOT NULL,
    tokens_out   BIGINT  NOT NULL,
    started_at   BIGINT  NOT NULL,
    duration_us  BIGINT  NOT NULL
);
CREATE INDEX gateway_calls_agent ON gateway_calls (agent, started_at);
