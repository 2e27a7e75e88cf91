"""LangChain's ChatOpenAI and OpenAIEmbeddings against Steward's /v1 gateway, unchanged but for
base_url.

Run by crates/steward/tests/it/gateway.rs with STEWARD_BASE and STEWARD_KEY set, against the same
mock upstream as openai_sdk.py. Exits non-zero (with the failing assertion) if the gateway does
not behave as LangChain expects.
"""
import os

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

base = os.environ["STEWARD_BASE"] + "/v1"
key = os.environ["STEWARD_KEY"]
llm = ChatOpenAI(model="smart", base_url=base, api_key=key, max_retries=0, timeout=30, temperature=0)

# invoke, with usage read from the response.
m = llm.invoke("hi there")
assert m.content == "echo: hi there", m
assert m.usage_metadata["input_tokens"] == 10 and m.usage_metadata["output_tokens"] == 3, m.usage_metadata

# Tools bound the LangChain way; both turns.
weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
with_tools = llm.bind_tools([weather])
ask = HumanMessage("weather in Paris?")
m = with_tools.invoke([ask])
assert m.tool_calls and m.tool_calls[0]["name"] == "get_weather", m
assert m.tool_calls[0]["args"] == {"city": "Paris"}, m.tool_calls
answer = with_tools.invoke([ask, m, ToolMessage("sunny", tool_call_id=m.tool_calls[0]["id"])])
assert answer.content == "It is sunny in Paris", answer

# Streaming, with usage on the last chunk (LangChain asks for stream_options.include_usage).
streaming = ChatOpenAI(
    model="smart", base_url=base, api_key=key, max_retries=0, timeout=30, stream_usage=True
)
total = None
for chunk in streaming.stream("stream"):
    total = chunk if total is None else total + chunk
assert total.content == "Hello", total
assert total.usage_metadata and total.usage_metadata["output_tokens"] == 2, total.usage_metadata

# Embeddings (without tiktoken's pre-tokenising, which would need to download its tables).
emb = OpenAIEmbeddings(
    model="embed", base_url=base, api_key=key, max_retries=0, check_embedding_ctx_length=False
)
vectors = emb.embed_documents(["abc", "hello"])
assert [v[0] for v in vectors] == [3.0, 5.0], vectors

print("langchain ChatOpenAI: ok")
