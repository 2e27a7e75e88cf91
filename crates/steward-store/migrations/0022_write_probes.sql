-- Each node's last proof that the store takes writes: `/readyz` commits one small row here, so
-- a node whose database cannot be written (a full disk, a read-only or lost database) is not
-- ready, even while reads still work.
CREATE TABLE write_probes (node TEXT PRIMARY KEY, at BIGINT NOT NULL);
