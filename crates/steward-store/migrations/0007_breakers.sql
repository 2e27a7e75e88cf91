-- Circuits open somewhere in the fleet: a node that opens one writes it here, and every node
-- applies the rows it did not write, so one node's failures spare the others.
CREATE TABLE breakers (
    deployment  TEXT    NOT NULL PRIMARY KEY,
    open_until  BIGINT  NOT NULL,
    opened_by   TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL
);
