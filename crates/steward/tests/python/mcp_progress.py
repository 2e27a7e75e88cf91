"""The official MCP Python SDK asking for progress of a long call through Steward's /mcp.

Run by crates/steward/tests/it/mcp.rs with STEWARD_BASE and STEWARD_KEY (an agent the policy
lets call `everything.trigger-long-running-operation` of the reference server). The reference
server reports each step of the operation; Steward passes each report on to this client, in
order. Prints what arrived as JSON; exits non-zero if it did not.
"""
import asyncio
import json
import os

from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

URL = os.environ["STEWARD_BASE"] + "/mcp"


async def main():
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {os.environ['STEWARD_KEY']}"})
    reports = []

    async def on_progress(progress, total, message):
        reports.append({"progress": progress, "total": total, "message": message})

    async with Client(streamable_http_client(URL, http_client=http), cache=None) as client:
        r = await client.call_tool(
            "everything.trigger-long-running-operation",
            {"duration": 2, "steps": 4},
            progress_callback=on_progress,
        )
        assert not r.is_error, r
    print(json.dumps(reports))
    assert len(reports) >= 2, reports
    assert all(p["total"] == 4 for p in reports), reports
    steps = [p["progress"] for p in reports]
    assert steps == sorted(steps), reports


asyncio.run(main())
