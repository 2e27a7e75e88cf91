-- Upstream MCP servers reached over Streamable HTTP: where, and the headers sent with every
-- request (values may name vault secrets as {{secret:NAME}}, resolved when connecting).
ALTER TABLE mcp_servers ADD COLUMN url TEXT NOT NULL DEFAULT '';
ALTER TABLE mcp_servers ADD COLUMN headers TEXT NOT NULL DEFAULT '{}';
