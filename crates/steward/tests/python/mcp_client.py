"""The official MCP Python SDK (`mcp`) as a client of Steward's /mcp.

Run by crates/steward/tests/it/mcp.rs with STEWARD_BASE, STEWARD_KEY (an agent the policy lets
call `echo`) and STEWARD_OTHER_KEY (an agent the policy lets call nothing) set. Speaks the
current revision (server/discover, stateless) and the initialize handshake of earlier ones.
Exits non-zero (with the failing assertion) if /mcp does not behave as the SDK expects.
"""
import asyncio
import os

from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

URL = os.environ["STEWARD_BASE"] + "/mcp"


def connect(key, mode):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(URL, http_client=http), mode=mode, cache=None)


def text(result):
    return " ".join(c.text for c in result.content if getattr(c, "text", None))


async def permitted(mode):
    async with connect(os.environ["STEWARD_KEY"], mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        # Only what the policy lets this agent call, and only tools that need no run; memory is
        # every agent's own (each scope decided when a call names it).
        assert names == {"echo", "tools_search", "tools_describe", "memory_search", "memory_add"}, (mode, names)
        echo = next(t for t in (await client.list_tools()).tools if t.name == "echo")
        assert echo.annotations.read_only_hint is True, echo
        assert echo.annotations.idempotent_hint is True, echo

        r = await client.call_tool("echo", {"city": "Paris", "n": [1, 2]})
        assert not r.is_error, r
        assert r.structured_content == {"city": "Paris", "n": [1, 2]}, r

        # A tool the list leaves out is refused when called anyway, with the reason.
        r = await client.call_tool("http_request", {"url": "https://example.com"})
        assert r.is_error and "no policy permits agent tooler" in text(r), r
        # A run's own tools are not there at all outside a run.
        r = await client.call_tool("scratchpad_set", {"key": "k", "value": "v"})
        assert r.is_error and "no tool" in text(r), r

        # Search ranks what the caller may call; describe gives schemas of those only.
        r = await client.call_tool("tools_search", {"query": "return my arguments unchanged"})
        assert not r.is_error, r
        hits = r.structured_content["tools"]
        assert hits and hits[0]["name"] == "echo", hits
        assert all(h["name"] != "http_request" for h in hits), hits
        r = await client.call_tool("tools_describe", {"names": ["echo", "http_request"]})
        assert [t["name"] for t in r.structured_content["tools"]] == ["echo"], r
        assert r.structured_content["unknown"] == ["http_request"], r

        # Arguments that break the schema are refused before the tool runs, with the path.
        r = await client.call_tool("tools_search", {"query": 5})
        assert r.is_error and "/query" in text(r), r
        r = await client.call_tool("tools_search", {"query": "x", "limit": 0})
        assert r.is_error and "/limit" in text(r), r

        # Memory: written to the agent's own scope, found by the next search, with entities.
        r = await client.call_tool("memory_add", {
            "text": f"The Oslo office opens at nine ({mode})", "entities": ["Oslo"],
            "relations": [{"subject": "office", "relation": "located_in", "object": "Oslo"}]})
        assert not r.is_error, r
        assert r.structured_content["scope"] == "agent:tooler", r
        r = await client.call_tool("memory_search", {"query": "when does the Oslo office open"})
        assert not r.is_error, r
        found = [m["text"] for m in r.structured_content["results"]]
        assert f"The Oslo office opens at nine ({mode})" in found, found
        # Another's scope needs a policy; bad arguments say what is wrong.
        r = await client.call_tool("memory_search", {"query": "salary", "scopes": ["user:stranger"]})
        assert r.is_error and "memory.read" in text(r), r
        r = await client.call_tool("memory_add", {"text": "x", "tags": "not-a-list"})
        assert r.is_error and "tags" in text(r), r


async def refused(mode):
    async with connect(os.environ["STEWARD_OTHER_KEY"], mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"tools_search", "tools_describe", "memory_search", "memory_add"}, (mode, names)
        r = await client.call_tool("echo", {"x": 1})
        assert r.is_error and "no policy permits agent outsider" in text(r), r
        # Its own memory holds nothing of tooler's.
        r = await client.call_tool("memory_search", {"query": "Oslo office"})
        assert not r.is_error and r.structured_content["results"] == [], r
        r = await client.call_tool("memory_search", {"query": "Oslo office", "scopes": ["agent:tooler"]})
        assert r.is_error and "memory.read" in text(r), r
        r = await client.call_tool("tools_search", {"query": "echo arguments"})
        assert r.structured_content["tools"] == [], r


async def main():
    for mode in ("auto", "legacy"):
        await permitted(mode)
        await refused(mode)
    print("ok")


asyncio.run(main())
