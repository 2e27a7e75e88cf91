-- The merge queue: git repositories agents submit branches to, their submissions in order
-- (queued, checking, landed, conflict, failed — `detail` says what happened), and path leases
-- agents take on files before they start, so parallel work overlaps less.
CREATE TABLE repos (
    name        TEXT    NOT NULL PRIMARY KEY,
    path        TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    check_cmd   TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE submissions (
    id          TEXT    NOT NULL PRIMARY KEY,
    repo        TEXT    NOT NULL,
    branch      TEXT    NOT NULL,
    submitter   TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    detail      TEXT,
    merged      TEXT,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
CREATE INDEX submissions_queue ON submissions (repo, state, created_at);

CREATE TABLE path_leases (
    repo        TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    holder      TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo, path)
);
