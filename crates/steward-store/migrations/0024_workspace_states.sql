-- Workspaces that follow their run: after each sandbox step that changed it, a run's workspace
-- is kept here as a manifest of content-addressed files, so the node that takes the run over
-- (after a kill, a stall, a drain) finds it as the last completed step left it.
CREATE TABLE workspace_blobs (
    hash       TEXT   PRIMARY KEY,   -- sha256 of the content, hex
    data       TEXT   NOT NULL,      -- the content, base64
    size       BIGINT NOT NULL,
    last_used  BIGINT NOT NULL       -- a save that relies on a blob touches it: see the sweep
);
CREATE TABLE workspace_states (
    run_id     TEXT   NOT NULL,
    seq        BIGINT NOT NULL,      -- the step that left the workspace so
    hash       TEXT   NOT NULL,      -- of the manifest
    manifest   TEXT   NOT NULL,      -- JSON: every path with its kind, mode and content
    at         BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
-- Which blobs each run's states use: blobs no run uses are swept.
CREATE TABLE workspace_refs (
    run_id     TEXT   NOT NULL,
    hash       TEXT   NOT NULL,
    PRIMARY KEY (run_id, hash)
);
CREATE INDEX workspace_refs_hash ON workspace_refs (hash);
