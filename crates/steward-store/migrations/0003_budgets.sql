-- Budgets as a ledger, in nano-dollars so every amount is an exact integer. An account's
-- `parent` makes the hierarchy (org → team → agent → run); a call reserves its worst case on
-- every account up the chain, then settles the real cost and releases the rest.
CREATE TABLE budgets (
    account         TEXT    NOT NULL PRIMARY KEY,
    parent          TEXT,
    cap_nanos       BIGINT  NOT NULL,
    period          TEXT    NOT NULL,
    period_start    BIGINT  NOT NULL,
    spent_nanos     BIGINT  NOT NULL,
    reserved_nanos  BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL
);
