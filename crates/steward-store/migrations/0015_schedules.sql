-- Durable timers: each schedule fires at `next_at` — on a cron pattern (UTC), or once — by
-- enqueuing a task on `queue` or starting a run of `agent`. Whatever fires is named by the
-- schedule and the time it was due (a task's dedup key, a run's id), so a firing replayed
-- after a crash, or raced by another node, creates nothing twice. `missed` says what to do
-- with times that passed while no node was running: skip, once, or all.
CREATE TABLE schedules (
    name           TEXT    NOT NULL PRIMARY KEY,
    cron           TEXT,
    queue          TEXT,
    agent          TEXT,
    payload        TEXT    NOT NULL,
    missed         TEXT    NOT NULL,
    next_at        BIGINT,
    last_fired_at  BIGINT,
    fired          BIGINT  NOT NULL,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_at);
