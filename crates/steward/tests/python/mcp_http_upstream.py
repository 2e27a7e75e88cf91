"""An upstream MCP server over Streamable HTTP, built on the official MCP Python SDK, that
answers only requests carrying `Authorization: Bearer $UPSTREAM_TOKEN` (401 otherwise).

Usage: mcp_http_upstream.py PORT. Tools: `add` (read-only, idempotent), `count` (how many
times `add` ran here), `slow` (sleeps, to be cancelled or timed out), `stats` (how many `slow`
calls finished and how many were cancelled), `traceparent` (the W3C traceparent the call's
`_meta` carried)."""

import asyncio
import os
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

TOKEN = os.environ["UPSTREAM_TOKEN"]
server = MCPServer("guarded")
ran = {"add": 0, "slow_done": 0, "slow_cancelled": 0}


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
def add(a: int, b: int) -> int:
    """Adds two integers."""
    ran["add"] += 1
    return a + b


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def count() -> int:
    """How many times `add` ran on this server."""
    return ran["add"]


@server.tool()
async def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        ran["slow_cancelled"] += 1
        raise
    ran["slow_done"] += 1
    return "slept"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def stats() -> dict:
    """How many `slow` calls finished here, and how many were cancelled."""
    return {"slow_done": ran["slow_done"], "slow_cancelled": ran["slow_cancelled"]}


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def traceparent(ctx: Context) -> str:
    """The W3C traceparent this call's `_meta` carried, or ''."""
    meta = ctx.request_context.meta
    if meta is None:
        return ""
    if isinstance(meta, dict):
        return meta.get("traceparent") or ""
    extra = getattr(meta, "model_extra", None) or {}
    return getattr(meta, "traceparent", None) or extra.get("traceparent") or ""


def guarded(app):
    async def asgi(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization", b"").decode() != f"Bearer {TOKEN}":
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"bad or missing bearer token"})
                return
        await app(scope, receive, send)
    return asgi


if __name__ == "__main__":
    app = server.streamable_http_app()
    uvicorn.run(guarded(app), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
