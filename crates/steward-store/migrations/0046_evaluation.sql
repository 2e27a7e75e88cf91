-- Evaluators score whole runs (their trajectory: steps, tools, cost, result). Each run is
-- scored once per evaluator: the primary key makes a second score of it, by a node that raced,
-- write nothing. A run an online evaluator's sample left out is kept with `sampled = 0`, so it
-- is not looked at again.
CREATE TABLE evaluators (
    name        TEXT    NOT NULL PRIMARY KEY,
    spec        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE eval_scores (
    run_id      TEXT              NOT NULL,
    evaluator   TEXT              NOT NULL,
    sampled     BIGINT            NOT NULL,
    score       DOUBLE PRECISION,
    passed      BIGINT,
    reason      TEXT,
    cost_nanos  BIGINT            NOT NULL,
    agent       TEXT              NOT NULL,
    at          BIGINT            NOT NULL,
    PRIMARY KEY (run_id, evaluator)
);
CREATE INDEX eval_scores_by_evaluator ON eval_scores (evaluator, at);
