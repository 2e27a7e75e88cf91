"""The OpenAI Agents SDK on its default path (the Responses API) against Steward.

Run by crates/steward/tests/it/gateway.rs with STEWARD_BASE and STEWARD_KEY set. An agent with a
function tool answers over two turns, with `Runner.run` and with `Runner.run_streamed`.
"""
import asyncio
import os

from agents import Agent, Runner, function_tool, set_default_openai_client, set_tracing_disabled
from openai import AsyncOpenAI

set_tracing_disabled(True)
set_default_openai_client(
    AsyncOpenAI(base_url=os.environ["STEWARD_BASE"] + "/v1", api_key=os.environ["STEWARD_KEY"], max_retries=0),
    use_for_tracing=False,
)

asked = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    asked.append(city)
    return "sunny"


agent = Agent(name="weather", instructions="Answer questions about the weather.", model="smart", tools=[get_weather])


async def main():
    result = await Runner.run(agent, "What is the weather in Paris?")
    assert result.final_output == "It is sunny in Paris", result.final_output
    streamed = Runner.run_streamed(agent, "What is the weather in Paris?")
    kinds = []
    async for ev in streamed.stream_events():
        kinds.append(ev.type)
    assert streamed.final_output == "It is sunny in Paris", streamed.final_output
    assert "raw_response_event" in kinds, kinds
    assert asked == ["Paris", "Paris"], asked


asyncio.run(main())
print("openai agents sdk: ok")
