-- Fixed one-minute windows of requests and tokens per scope (`key:…`, `agent:…`, `model:…`),
-- shared by every node on the database.
CREATE TABLE rate_windows (
    scope         TEXT    NOT NULL,
    window_start  BIGINT  NOT NULL,
    requests      BIGINT  NOT NULL,
    tokens        BIGINT  NOT NULL,
    PRIMARY KEY (scope, window_start)
);
