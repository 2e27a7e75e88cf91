-- Task queues. A queue's settings (created with defaults on its first task): how many of its
-- tasks may be leased at once, all told and per worker, and how failed tasks are retried.
CREATE TABLE queues (
    name           TEXT    NOT NULL PRIMARY KEY,
    max_in_flight  BIGINT,
    per_worker     BIGINT,
    max_attempts   BIGINT  NOT NULL,
    retry_base_ms  BIGINT  NOT NULL,
    lease_ms       BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);

-- One row per task. `state`: pending (ready at `run_at`), leased (to `lease_owner` until
-- `lease_until`, or to run `run_id`, which finishes it), done, or dead (the dead-letter queue;
-- `error` says why). `attempts` counts leases and fences a worker that lost its lease.
-- `tenant_seq` is the task's place among its tenant's tasks: leasing in that order interleaves
-- tenants, so one tenant's burst does not starve the others.
CREATE TABLE tasks (
    id           TEXT    NOT NULL PRIMARY KEY,
    queue        TEXT    NOT NULL,
    tenant       TEXT    NOT NULL,
    tenant_seq   BIGINT  NOT NULL,
    priority     BIGINT  NOT NULL,
    payload      TEXT    NOT NULL,
    dedup_key    TEXT,
    state        TEXT    NOT NULL,
    run_at       BIGINT  NOT NULL,
    deadline     BIGINT,
    attempts     BIGINT  NOT NULL,
    max_attempts BIGINT  NOT NULL,
    lease_owner  TEXT,
    lease_until  BIGINT,
    run_id       TEXT,
    result       TEXT,
    error        TEXT,
    enqueued_at  BIGINT  NOT NULL,
    leased_at    BIGINT,
    finished_at  BIGINT,
    updated_at   BIGINT  NOT NULL
);
CREATE UNIQUE INDEX tasks_dedup ON tasks (queue, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX tasks_ready ON tasks (queue, state, priority DESC, tenant_seq, enqueued_at);
CREATE INDEX tasks_leases ON tasks (state, lease_until);
CREATE INDEX tasks_run ON tasks (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE task_tenants (
    queue     TEXT    NOT NULL,
    tenant    TEXT    NOT NULL,
    next_seq  BIGINT  NOT NULL,
    PRIMARY KEY (queue, tenant)
);
