-- Model calls booked without an answer on record: a step's call cut off (the node died, or
-- lost the run) after it may have reached the upstream, which bills it, booked at its full
-- hold (or its worst case) when the step is made again; and gateway calls interrupted the same
-- way. The cost report counts them, so it agrees with the budget ledger.
CREATE TABLE interrupted_steps (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    name TEXT NOT NULL,
    booked_nanos BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX interrupted_steps_at ON interrupted_steps (at);
ALTER TABLE gateway_calls ADD COLUMN booked_nanos BIGINT;
