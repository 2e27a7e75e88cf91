-- Trace spans kept in the store: Steward's own and those external agents send over OTLP,
-- joined by trace id. One row per span; a span sent again (an exporter retrying) is kept once.
-- Times are the span's own, in nanoseconds since the epoch; `received_at` (milliseconds) is when
-- it arrived, which retention goes by. `attributes`, `events` and `resource` are JSON.
CREATE TABLE spans (
    trace_id       TEXT   NOT NULL,
    span_id        TEXT   NOT NULL,
    parent_span_id TEXT,
    name           TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    service        TEXT,
    sent_by        TEXT   NOT NULL,
    start_ns       BIGINT NOT NULL,
    end_ns         BIGINT NOT NULL,
    status         TEXT   NOT NULL,
    status_message TEXT,
    attributes     TEXT   NOT NULL,
    events         TEXT   NOT NULL,
    resource       TEXT   NOT NULL,
    received_at    BIGINT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX spans_received ON spans (received_at);
