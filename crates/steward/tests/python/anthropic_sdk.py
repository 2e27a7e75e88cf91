"""The official `anthropic` Python SDK against Steward's /v1/messages, unchanged but for base_url.

Run by crates/steward/tests/it/gateway.rs with STEWARD_BASE and STEWARD_KEY set (the key is sent
as the SDK sends it, in `x-api-key`). Exits non-zero (with the failing assertion) if the gateway
does not behave as the SDK expects.
"""
import os

import anthropic

base = os.environ["STEWARD_BASE"]
client = anthropic.Anthropic(base_url=base, api_key=os.environ["STEWARD_KEY"], max_retries=0, timeout=30)

# A plain message, through the alias: its first deployment is down, the second answers.
r = client.messages.create(model="smart", max_tokens=100, messages=[{"role": "user", "content": "hi there"}])
assert r.type == "message" and r.role == "assistant", r
assert [b.type for b in r.content] == ["text"] and r.content[0].text == "echo: hi there", r
assert r.stop_reason == "end_turn", r
assert r.usage.input_tokens == 10 and r.usage.output_tokens == 3, r.usage

# An image travels with the text (checked at the upstream by the test).
r = client.messages.create(model="smart", max_tokens=100, messages=[{"role": "user", "content": [
    {"type": "text", "text": "look"},
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
]}])
assert r.content[0].text == "echo: look", r

# Tools over two turns, with a system prompt and stop sequences.
tools = [{
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
messages = [{"role": "user", "content": "weather in Paris?"}]
r = client.messages.create(
    model="smart", max_tokens=100, system="You are terse.", stop_sequences=["END"], tools=tools, messages=messages
)
assert r.stop_reason == "tool_use", r
use = [b for b in r.content if b.type == "tool_use"][0]
assert use.name == "get_weather" and use.input == {"city": "Paris"}, use
messages.append({"role": "assistant", "content": r.content})
messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]})
r = client.messages.create(model="smart", max_tokens=100, tools=tools, messages=messages)
assert r.content[0].text == "It is sunny in Paris", r

# Streaming: the SDK's helper assembles text and the final message, usage included.
# top_k is Anthropic's own: an Anthropic deployment gets it (checked at the upstream by the test).
with client.messages.stream(
    model="smart", max_tokens=100, messages=[{"role": "user", "content": "stream"}], extra_body={"top_k": 5}
) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
assert text == "Hello", text
assert final.content[0].text == "Hello" and final.stop_reason == "end_turn", final
assert final.usage.output_tokens == 2, final.usage

# Token counting answers without calling a model: an Anthropic deployment counts (the test's mock
# says COUNTED_TOKENS), any other route gets an estimate.
c = client.messages.count_tokens(model="smart", messages=[{"role": "user", "content": "hello world"}])
assert c.input_tokens > 0, c
if os.environ.get("COUNTED_TOKENS"):
    assert c.input_tokens == int(os.environ["COUNTED_TOKENS"]), c

# Errors arrive as the SDK's typed exceptions.
try:
    anthropic.Anthropic(base_url=base, api_key="sk-steward-wrong", max_retries=0).messages.create(
        model="smart", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    raise AssertionError("a bad key was accepted")
except anthropic.AuthenticationError as e:
    assert e.status_code == 401 and e.body["type"] == "error", e.body
try:
    client.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was accepted")
except anthropic.NotFoundError as e:
    assert e.body["error"]["type"] == "not_found_error", e.body
try:
    client.messages.create(model="smart", max_tokens=10, messages=[{"role": "robot", "content": "x"}])
    raise AssertionError("a bad role was accepted")
except anthropic.BadRequestError as e:
    assert "role" in e.body["error"]["message"], e.body

print("anthropic sdk: ok")
