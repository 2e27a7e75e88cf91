-- Fencing: every claim of a run gives it a new epoch. A node writes a run's journal and state
-- only under the epoch its claim was given, so a node that stalled past its lease and lost the
-- run to a later claim cannot write for it any more.
ALTER TABLE runs ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
