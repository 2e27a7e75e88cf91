"""The official `openai` Python SDK against Steward's /v1 gateway, unchanged but for base_url.

Run by crates/steward/tests/it/gateway.rs with STEWARD_BASE, STEWARD_KEY, STEWARD_RUN and
STEWARD_TOKEN (a delegated token minted for the key's agent) set.
Exits non-zero (with the failing assertion) if the gateway does not behave as the SDK expects.
"""
import json
import os

import openai
from openai import OpenAI

base = os.environ["STEWARD_BASE"] + "/v1"
client = OpenAI(base_url=base, api_key=os.environ["STEWARD_KEY"], max_retries=0, timeout=30)

models = [m.id for m in client.models.list()]
assert "smart" in models, models

# Plain completion, through the alias: its first deployment is down, the second answers.
r = client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi there"}])
assert r.choices[0].message.content == "echo: hi there", r
assert r.usage.prompt_tokens == 10 and r.usage.completion_tokens == 3, r.usage

# Tool calling, both turns.
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
messages = [{"role": "user", "content": "weather in Paris?"}]
r = client.chat.completions.create(model="smart", messages=messages, tools=tools, tool_choice="auto")
call = r.choices[0].message.tool_calls[0]
assert r.choices[0].finish_reason == "tool_calls", r
assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}, call
messages.append(r.choices[0].message.model_dump(exclude_none=True))
messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny"})
r = client.chat.completions.create(model="smart", messages=messages, tools=tools)
assert r.choices[0].message.content == "It is sunny in Paris", r

# response_format reaches the upstream.
r = client.chat.completions.create(
    model="smart", messages=[{"role": "user", "content": "json please"}], response_format={"type": "json_object"}
)
assert json.loads(r.choices[0].message.content) == {"ok": True}, r

# Streaming with usage.
stream = client.chat.completions.create(
    model="smart", messages=[{"role": "user", "content": "stream"}], stream=True, stream_options={"include_usage": True}
)
text, usage = "", None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
assert text == "Hello", text
assert usage is not None and usage.completion_tokens == 2, usage

# Embeddings.
e = client.embeddings.create(model="embed", input=["a", "bb"])
assert [d.embedding for d in e.data] == [[1.0, 0.5], [2.0, 0.5]], e
assert e.usage.prompt_tokens == 3, e.usage

# Attribution to a run.
r = client.chat.completions.create(
    model="smart",
    messages=[{"role": "user", "content": "for my run"}],
    extra_headers={"X-Steward-Run": os.environ["STEWARD_RUN"]},
)
assert r.choices[0].message.content == "echo: for my run"

# Errors arrive as the SDK's typed exceptions.
try:
    OpenAI(base_url=base, api_key="sk-steward-wrong", max_retries=0).chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "x"}]
    )
    raise AssertionError("a bad key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.code == "invalid_api_key", e
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e
try:
    client.chat.completions.create(model="smart", messages="not a list")
    raise AssertionError("malformed messages were accepted")
except openai.BadRequestError as e:
    assert "messages" in str(e), e

# A delegated token works beside its holder's own key, as a default header; never alone.
delegated = OpenAI(
    base_url=base,
    api_key=os.environ["STEWARD_KEY"],
    default_headers={"X-Steward-Delegation": os.environ["STEWARD_TOKEN"]},
    max_retries=0,
)
r = delegated.chat.completions.create(model="smart", messages=[{"role": "user", "content": "delegated"}])
assert r.choices[0].message.content == "echo: delegated", r
try:
    OpenAI(base_url=base, api_key=os.environ["STEWARD_TOKEN"], max_retries=0).chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "x"}]
    )
    raise AssertionError("a token without its holder's key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and "X-Steward-Delegation" in str(e), e

# A malformed limit is the caller's to fix (400), and an unknown model's lookup is a 404.
try:
    client.chat.completions.create(model="smart", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    raise AssertionError("max_tokens=0 was accepted")
except openai.BadRequestError as e:
    assert "max_tokens" in str(e), e
assert client.models.retrieve("smart").id == "smart"
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("an unknown model was found")
except openai.NotFoundError:
    pass

print("openai sdk: all checks passed")
