-- Every policy set ever put in force, newest last: the highest version is the active one, and
-- every node follows it. Decisions record the set's hash.
CREATE TABLE policy_sets (
    version     BIGINT  NOT NULL PRIMARY KEY,
    hash        TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
