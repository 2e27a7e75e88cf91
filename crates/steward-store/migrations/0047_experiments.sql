-- Datasets: inputs with what is expected of them. An experiment runs one agent version over a
-- dataset, one run per item (its id derived from the experiment's and the item's), and its
-- evaluators score each run once it has ended.
CREATE TABLE datasets (
    name        TEXT    NOT NULL PRIMARY KEY,
    items       TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE experiments (
    id             TEXT    NOT NULL PRIMARY KEY,
    dataset        TEXT    NOT NULL,
    agent          TEXT    NOT NULL,
    agent_version  BIGINT  NOT NULL,
    evaluators     TEXT    NOT NULL,
    items          TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL
);
CREATE INDEX experiments_by_time ON experiments (created_at);

-- What each experiment run is to be scored by, with the item's expectation: the runs that ended
-- and lack a score are found by one query.
CREATE TABLE experiment_scoring (
    run_id      TEXT    NOT NULL,
    evaluator   TEXT    NOT NULL,
    experiment  TEXT    NOT NULL,
    expected    TEXT,
    PRIMARY KEY (run_id, evaluator)
);
