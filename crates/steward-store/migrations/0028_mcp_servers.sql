-- Upstream MCP servers whose tools the registry offers under the server's name as a prefix.
-- Every node runs its own connection to each; a change here is followed by every node.
CREATE TABLE mcp_servers (
    name TEXT PRIMARY KEY,
    -- 'stdio': a command started and spoken to on its stdin and stdout.
    transport TEXT NOT NULL,
    -- JSON array: the command and its arguments.
    command TEXT NOT NULL,
    -- JSON object: environment variables the command gets.
    env TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
