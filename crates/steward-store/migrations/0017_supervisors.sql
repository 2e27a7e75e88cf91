-- Supervision trees. A supervisor's spec and its state (children, their runs, restarts within
-- the intensity window) are JSON documents; `version` makes every change a compare-and-set, so
-- nodes that look at the same supervisor at once never both act on it.
CREATE TABLE supervisors (
    name        TEXT    NOT NULL PRIMARY KEY,
    spec        TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- What a root supervisor that gave up escalates to: a human.
CREATE TABLE incidents (
    id           TEXT    NOT NULL PRIMARY KEY,
    supervisor   TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    resolved_at  BIGINT,
    resolution   TEXT
);
