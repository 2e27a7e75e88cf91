-- A fork is a run started from another run's journal up to a step: the steps before `at_seq`
-- are copied into its journal (replayed, never redone), and from `at_seq` on its model sees the
-- edits kept here (NULL: unchanged). Kept beside the run so a fork that replays after a crash
-- applies them again at the same step.
CREATE TABLE run_forks (
    run_id         TEXT    NOT NULL PRIMARY KEY,
    source_id      TEXT    NOT NULL,
    at_seq         BIGINT  NOT NULL,
    input          TEXT,
    system_prompt  TEXT,
    model          TEXT,
    created_at     BIGINT  NOT NULL
);
CREATE INDEX run_forks_source ON run_forks (source_id);
