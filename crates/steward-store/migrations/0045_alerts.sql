-- Alert rules and what they raised. An alert is `ok` or `firing`; the change between the two
-- is one conditional update, so among nodes sharing the store exactly one opens the incident
-- and queues the webhook delivery, in the same commit.
CREATE TABLE alerts (
    name         TEXT              NOT NULL PRIMARY KEY,
    spec         TEXT              NOT NULL,
    state        TEXT              NOT NULL,
    value        DOUBLE PRECISION,
    incident_id  TEXT,
    checked_at   BIGINT            NOT NULL,
    changed_at   BIGINT            NOT NULL,
    created_at   BIGINT            NOT NULL,
    updated_at   BIGINT            NOT NULL
);

-- Webhook calls to make, kept until delivered or given up on: retried with a growing pause,
-- by whichever node claims them first.
CREATE TABLE alert_deliveries (
    id            TEXT    NOT NULL PRIMARY KEY,
    alert         TEXT    NOT NULL,
    event         TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    attempts      BIGINT  NOT NULL,
    next_at       BIGINT  NOT NULL,
    last_error    TEXT,
    created_at    BIGINT  NOT NULL,
    delivered_at  BIGINT
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (state, next_at);
CREATE INDEX alert_deliveries_alert ON alert_deliveries (alert, created_at);

-- Latency alerts read the gateway's calls of a recent window.
CREATE INDEX gateway_calls_started ON gateway_calls (started_at);
