-- A node scoring a run (a judge to pay, a sandbox to start) claims it first, for a while; the
-- other nodes leave it alone until the claim runs out, so nobody pays twice for one score.
CREATE TABLE eval_claims (
    run_id     TEXT    NOT NULL,
    evaluator  TEXT    NOT NULL,
    node       TEXT    NOT NULL,
    until      BIGINT  NOT NULL,
    PRIMARY KEY (run_id, evaluator)
);
