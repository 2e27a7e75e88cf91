-- Every budget hold still open: what it holds on which accounts, so that settling needs only
-- its id, a replayed step finds its hold instead of taking a second one, and holds whose owner
-- died (a gateway call cut off by a crash, a run that ended) can be released.
CREATE TABLE budget_holds (
    id          TEXT    NOT NULL PRIMARY KEY,
    kind        TEXT    NOT NULL,   -- 'call' (a /v1 gateway call) or 'step' (a managed run's step)
    run_id      TEXT,
    accounts    TEXT    NOT NULL,   -- JSON array, leaf to root
    amount      BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX budget_holds_created ON budget_holds (created_at);
