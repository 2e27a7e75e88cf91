-- Embeddings of memory versions: the model that made each and the vector (base64 of its
-- little-endian f32s). A version's vector goes with it when it is erased. `updated_at` moves
-- on every change, so other nodes' indexes follow.
CREATE TABLE memory_vectors (
    id         TEXT   NOT NULL PRIMARY KEY,
    model      TEXT   NOT NULL,
    vector     TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX memory_vectors_updated ON memory_vectors (updated_at, id);
