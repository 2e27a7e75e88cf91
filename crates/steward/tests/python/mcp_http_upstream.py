"""An upstream MCP server over Streamable HTTP, built on the official MCP Python SDK, that
answers only requests carrying `Authorization: Bearer $UPSTREAM_TOKEN` (401 otherwise).

With `UPSTREAM_OAUTH_SECRET` set instead, it is also its own OAuth 2 authorization server:
`POST /token` grants client `steward` (HTTP Basic, that secret) access tokens by the
client-credentials grant, each living `UPSTREAM_TOKEN_LIFETIME` seconds, and only a token it
granted and that has not expired is let in (401 with `WWW-Authenticate: Bearer
error="invalid_token"` otherwise). Tools `auth_stats` (tokens granted, requests refused) and
`revoke` (every token granted so far stops working, as when a server rotates its keys).

Usage: mcp_http_upstream.py PORT. Tools: `add` (read-only, idempotent), `count` (how many
times `add` ran here), `slow` (sleeps, to be cancelled or timed out), `slow_read` (sleeps;
idempotent), `stats` (how many `slow` calls finished and how many were cancelled, how many
`slow_read` calls started), `traceparent` (the W3C traceparent the call's
`_meta` carried)."""

import asyncio
import base64
import os
import secrets
import sys
import time
from urllib.parse import parse_qs

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

TOKEN = os.environ.get("UPSTREAM_TOKEN", "")
OAUTH_SECRET = os.environ.get("UPSTREAM_OAUTH_SECRET", "")
LIFETIME = float(os.environ.get("UPSTREAM_TOKEN_LIFETIME", "60"))
server = MCPServer("guarded")
ran = {"add": 0, "slow_done": 0, "slow_cancelled": 0, "slow_read_started": 0}
# OAuth mode: each token granted, with when it expires.
granted = {}
auth = {"granted": 0, "refused": 0, "refused_expired": 0, "bad_client": 0}


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


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
async def slow_read(seconds: float) -> str:
    """Sleeps, then answers: a slow call that is safe to make again."""
    ran["slow_read_started"] += 1
    await asyncio.sleep(seconds)
    return "read"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def stats() -> dict:
    """How many `slow` calls finished here and how many were cancelled, and how many
    `slow_read` calls started."""
    return {"slow_done": ran["slow_done"], "slow_cancelled": ran["slow_cancelled"],
            "slow_read_started": ran["slow_read_started"]}


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


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def auth_stats() -> dict:
    """OAuth mode: tokens granted, and requests refused (and how many for an expired token)."""
    return dict(auth)


@server.tool()
def revoke() -> str:
    """OAuth mode: every token granted so far stops working."""
    granted.clear()
    return "revoked"


async def answer(send, status, body, headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": body})


async def body_of(receive):
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            return body


async def token_endpoint(scope, receive, send):
    headers = dict(scope["headers"])
    form = parse_qs((await body_of(receive)).decode())
    basic = "Basic " + base64.b64encode(f"steward:{OAUTH_SECRET}".encode()).decode()
    if headers.get(b"authorization", b"").decode() != basic:
        auth["bad_client"] += 1
        return await answer(send, 401, b'{"error":"invalid_client"}')
    if form.get("grant_type") != ["client_credentials"]:
        return await answer(send, 400, b'{"error":"unsupported_grant_type"}')
    token = secrets.token_urlsafe(24)
    granted[token] = time.monotonic() + LIFETIME
    auth["granted"] += 1
    body = f'{{"access_token":"{token}","token_type":"Bearer","expires_in":{LIFETIME:g}}}'
    return await answer(send, 200, body.encode())


def let_in(headers):
    given = headers.get(b"authorization", b"").decode()
    if not OAUTH_SECRET:
        return given == f"Bearer {TOKEN}"
    token = given.removeprefix("Bearer ")
    expires = granted.get(token)
    if expires is None or not given.startswith("Bearer "):
        return False
    if expires < time.monotonic():
        auth["refused_expired"] += 1
        return False
    return True


def guarded(app):
    async def asgi(scope, receive, send):
        if scope["type"] == "http":
            if OAUTH_SECRET and scope["path"] == "/token" and scope["method"] == "POST":
                return await token_endpoint(scope, receive, send)
            if not let_in(dict(scope["headers"])):
                auth["refused"] += 1
                challenge = (b"www-authenticate", b'Bearer error="invalid_token"')
                return await answer(send, 401, b'{"error":"invalid_token"}',
                                    [challenge] if OAUTH_SECRET else [])
        await app(scope, receive, send)
    return asgi


if __name__ == "__main__":
    app = server.streamable_http_app()
    uvicorn.run(guarded(app), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
