"""A LangGraph agent whose tools come from Steward's /mcp through `langchain-mcp-adapters`.

Run by crates/steward/tests/it/mcp.rs with STEWARD_BASE and STEWARD_KEY (an agent the policy
lets call `echo`), in a virtual environment of its own: the adapters need the MCP SDK 1.x, the
rest of the tests the 2.x one. The chat model is scripted (LangChain's fake chat model, which
asks for one tool call and then answers): the model is not what is tested, the tool path is.
Prints the agent's messages as JSON; exits non-zero if the tools did not behave.
"""
import asyncio
import json
import os

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_mcp_adapters.client import MultiServerMCPClient
from langgraph.prebuilt import create_react_agent


class ScriptedModel(GenericFakeChatModel):
    """Answers from a list, whatever it is asked; tools are accepted and ignored."""

    def bind_tools(self, tools, **kwargs):
        return self


async def main():
    client = MultiServerMCPClient({
        "steward": {
            "transport": "streamable_http",
            "url": os.environ["STEWARD_BASE"] + "/mcp",
            "headers": {"Authorization": f"Bearer {os.environ['STEWARD_KEY']}"},
        }
    })
    tools = await client.get_tools()
    names = sorted(t.name for t in tools)
    # Only what the policy lets this agent call.
    assert names == ["echo", "memory_add", "memory_search", "tools_describe", "tools_search"], names

    model = ScriptedModel(messages=iter([
        AIMessage(content="", tool_calls=[{"name": "echo", "args": {"city": "Oslo"}, "id": "call_1"}]),
        AIMessage(content="done"),
    ]))
    agent = create_react_agent(model, tools)
    out = await agent.ainvoke({"messages": [{"role": "user", "content": "where?"}]})
    messages = [{"type": m.type, "content": m.content} for m in out["messages"]]
    print(json.dumps(messages))
    tool_results = [m for m in out["messages"] if m.type == "tool"]
    assert len(tool_results) == 1, messages
    assert "Oslo" in str(tool_results[0].content), messages
    assert out["messages"][-1].content == "done", messages


asyncio.run(main())
