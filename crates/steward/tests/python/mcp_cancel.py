"""The official MCP Python SDK cancelling a tool call through Steward's /mcp.

Run by crates/steward/tests/it/mcp_http.rs with STEWARD_BASE and STEWARD_KEY (an agent the
policy lets call `guarded.slow` and `guarded.stats`). Calls `guarded.slow` for 30 s and gives up
after 1 s — at the current revision the SDK cancels by closing the request — then asks the
upstream, through Steward, until it reports the call cancelled. Prints the upstream's counts as
JSON; exits non-zero if the cancellation never reached it.
"""
import asyncio
import json
import os
import time

import anyio
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

URL = os.environ["STEWARD_BASE"] + "/mcp"


async def main():
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {os.environ['STEWARD_KEY']}"})
    async with Client(streamable_http_client(URL, http_client=http), cache=None) as client:
        async def ignore(progress, total, message):
            pass

        # Once plainly, once asking for progress (Steward then tracks the upstream call itself).
        for attempt, progress in enumerate([None, ignore], start=1):
            started = time.monotonic()
            with anyio.move_on_after(1):
                await client.call_tool("guarded.slow", {"seconds": 30}, progress_callback=progress)
            given_up = time.monotonic() - started
            assert given_up < 5, given_up
            stats = {}
            for _ in range(100):
                r = await client.call_tool("guarded.stats", {})
                assert not r.is_error, r
                # Steward passes the upstream's text on as `content`.
                sc = r.structured_content or {}
                stats = sc if "slow_done" in sc else json.loads(sc.get("content", "{}"))
                if stats.get("slow_cancelled") == attempt:
                    break
                await asyncio.sleep(0.1)
            print(json.dumps(stats))
            assert stats.get("slow_cancelled") == attempt and stats.get("slow_done") == 0, stats


asyncio.run(main())
