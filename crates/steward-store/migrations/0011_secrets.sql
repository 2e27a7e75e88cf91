-- The vault's values, encrypted (hex nonce ‖ ciphertext); names are not secret.
CREATE TABLE secrets (
    name        TEXT    NOT NULL PRIMARY KEY,
    sealed      TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL
);
