-- HTTP APIs described by an OpenAPI 3 document: each operation is a registry tool named
-- `name.operationId`. Every node builds the tools from here and follows changes.
CREATE TABLE openapi_apis (
    name TEXT PRIMARY KEY,
    -- The document, as JSON (a YAML one is stored converted).
    document TEXT NOT NULL,
    -- Where the operations' paths are appended.
    base_url TEXT NOT NULL,
    -- JSON objects: headers and query parameters sent with every call (credentials); values
    -- may name vault secrets as {{secret:NAME}}, filled at call time.
    headers TEXT NOT NULL,
    query TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- JSON: the OAuth 2 client the API's calls are authorised with; '' for none.
ALTER TABLE openapi_apis ADD COLUMN oauth TEXT NOT NULL DEFAULT '';

-- OAuth access tokens, one per API, shared by every node: one node at a time refreshes one
-- (it holds the lease), the others use the token it stores. Tokens are sealed with the vault's
-- key; a refresh token the server rotated in is kept here, so no rotation is lost.
CREATE TABLE oauth_tokens (
    name TEXT PRIMARY KEY,
    access_sealed TEXT NOT NULL,
    refresh_sealed TEXT NOT NULL,
    -- When to ask for a new one (before it expires), and when it expires.
    refresh_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    lease_owner TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);
