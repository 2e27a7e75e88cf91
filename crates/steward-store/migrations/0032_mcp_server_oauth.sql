-- JSON: the OAuth 2 client whose access token authorises every request to an upstream MCP
-- server over Streamable HTTP ('' for none). Its tokens live in oauth_tokens, under the
-- server's name (servers and OpenAPI APIs share one name space).
ALTER TABLE mcp_servers ADD COLUMN oauth TEXT NOT NULL DEFAULT '';
