-- notifications/cancelled from earlier-revision MCP clients that reached a node other than
-- the one running the call it names: every node with calls in flight looks here.
CREATE TABLE mcp_call_cancels (
    agent TEXT NOT NULL,
    -- The JSON-RPC id of the call, as JSON text.
    request_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (agent, request_id, at)
);
CREATE INDEX mcp_call_cancels_at ON mcp_call_cancels (at);
