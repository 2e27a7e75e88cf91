-- Approvals a policy asked for (`@approval("group")` on a permit): one per step of a run. The
-- run waits (`wait_kind = 'approval'`) until an approver decides or the request expires.
CREATE TABLE approvals (
    id           TEXT    NOT NULL PRIMARY KEY,
    run_id       TEXT    NOT NULL,
    seq          BIGINT  NOT NULL,
    approvers    TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    resource     TEXT    NOT NULL,
    policy_ids   TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    reason       TEXT,
    decided_by   TEXT,
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    decided_at   BIGINT,
    UNIQUE (run_id, seq)
);
CREATE INDEX approvals_state ON approvals (state, expires_at);
