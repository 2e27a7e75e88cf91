-- A merge check is leased to the node running it: `checker` renews `check_until` while the
-- check runs, so a check whose node died is taken back when its lease runs out (or at once
-- when that node starts again), and the node's late report is refused. `attempts` counts the
-- checks begun, so one that cannot run at all stops holding up the repository.
ALTER TABLE submissions ADD COLUMN checker TEXT;
ALTER TABLE submissions ADD COLUMN check_until BIGINT;
ALTER TABLE submissions ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
