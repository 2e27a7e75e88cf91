-- Who answers for an upstream MCP server's tools, or an OpenAPI API's (a team, a person);
-- '' when the definition names nobody (the registry shows `admin`).
ALTER TABLE mcp_servers ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE openapi_apis ADD COLUMN owner TEXT NOT NULL DEFAULT '';
