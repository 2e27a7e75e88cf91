-- Memory's graph, in the store's own tables: the entities memories name (people, places,
-- things), per scope; the names each is known by (its first name and aliases), resolved by a
-- key (case-folded, spaces collapsed) so "Alice" and "alice" are one entity; which entities
-- each memory version names; and (subject, relation, object) edges, each stated by a memory
-- version, its provenance. Edges and mentions live and die with the version that states them.
CREATE TABLE memory_entities (
    id         TEXT   NOT NULL PRIMARY KEY,
    scope      TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    kind       TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX memory_entities_scope ON memory_entities (scope);

CREATE TABLE memory_entity_names (
    scope  TEXT NOT NULL,
    name_key TEXT NOT NULL,
    name   TEXT NOT NULL,
    entity TEXT NOT NULL,
    PRIMARY KEY (scope, name_key)
);
CREATE INDEX memory_entity_names_entity ON memory_entity_names (entity);

CREATE TABLE memory_mentions (
    memory TEXT NOT NULL,
    entity TEXT NOT NULL,
    PRIMARY KEY (memory, entity)
);
CREATE INDEX memory_mentions_entity ON memory_mentions (entity);

CREATE TABLE memory_relations (
    memory   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    relation TEXT NOT NULL,
    object   TEXT NOT NULL,
    PRIMARY KEY (memory, subject, relation, object)
);
CREATE INDEX memory_relations_subject ON memory_relations (subject);
CREATE INDEX memory_relations_object ON memory_relations (object);
