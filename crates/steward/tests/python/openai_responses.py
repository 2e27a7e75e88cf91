"""The official `openai` Python SDK's Responses API against Steward's /v1/responses.

Run by crates/steward/tests/it/gateway.rs with STEWARD_BASE, STEWARD_KEY (an agent's key) and
STEWARD_OTHER_KEY (a key of another owner's agent) set. Exits non-zero (with the failing
assertion) if the gateway does not behave as the SDK expects.
"""
import json
import os

import openai
from openai import OpenAI

base = os.environ["STEWARD_BASE"] + "/v1"
client = OpenAI(base_url=base, api_key=os.environ["STEWARD_KEY"], max_retries=0, timeout=30)
other = OpenAI(base_url=base, api_key=os.environ["STEWARD_OTHER_KEY"], max_retries=0, timeout=30)

# Text in, text out, through the alias; metadata comes back.
r = client.responses.create(model="smart", input="hi there", instructions="Be kind.", metadata={"case": "plain"})
assert r.object == "response" and r.status == "completed", r
assert r.output_text == "echo: hi there", r
assert r.usage.input_tokens == 10 and r.usage.output_tokens == 3, r.usage
assert r.metadata == {"case": "plain"}, r.metadata

# Conversation state kept by Steward: the next turn continues from the stored one.
r2 = client.responses.create(model="smart", input="and again", previous_response_id=r.id)
assert r2.output_text == "echo: and again" and r2.previous_response_id == r.id, r2
got = client.responses.retrieve(r.id)
assert got.id == r.id and got.output_text == "echo: hi there", got
items = client.responses.input_items.list(r2.id)
assert [(i.type, i.role) for i in items.data] == [("message", "user")], items

# Readable only by the owner that made it.
try:
    other.responses.retrieve(r.id)
    raise AssertionError("another owner read the response")
except openai.NotFoundError:
    pass
try:
    other.responses.create(model="smart", input="x", previous_response_id=r.id)
    raise AssertionError("another owner continued the conversation")
except openai.NotFoundError:
    pass

# Deleted, it is gone; store=false keeps nothing.
d = client.responses.delete(r2.id)
try:
    client.responses.retrieve(r2.id)
    raise AssertionError("a deleted response was found")
except openai.NotFoundError:
    pass
r3 = client.responses.create(model="smart", input="forget me", store=False)
assert r3.output_text == "echo: forget me", r3
try:
    client.responses.retrieve(r3.id)
    raise AssertionError("store=false kept the response")
except openai.NotFoundError:
    pass

# Function tools over two turns, the second continuing the first.
tools = [{
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}]
r = client.responses.create(model="smart", input="weather in Paris?", tools=tools, tool_choice="auto")
calls = [o for o in r.output if o.type == "function_call"]
assert len(calls) == 1 and calls[0].name == "get_weather", r.output
assert json.loads(calls[0].arguments) == {"city": "Paris"}, calls[0]
r = client.responses.create(
    model="smart",
    previous_response_id=r.id,
    tools=tools,
    input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
)
assert r.output_text == "It is sunny in Paris", r

# Structured output and an output limit reach the upstream (checked there by the test), and
# the answer is the JSON asked for, on every kind of deployment (Anthropic's through a tool).
verdict = {"format": {"type": "json_schema", "name": "verdict", "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}}
r = client.responses.create(model="smart", input="json please", max_output_tokens=64, text=verdict)
assert r.status == "completed", r
assert json.loads(r.output_text) == {"ok": True}, r.output
stream = client.responses.create(model="smart", input="json stream", text=verdict, stream=True)
text = "".join(ev.delta for ev in stream if ev.type == "response.output_text.delta")
assert json.loads(text) == {"ok": True}, text

# Streaming: the Responses events in order, the text, and the completed response with usage.
stream = client.responses.create(model="smart", input="stream", stream=True)
kinds, text, final = [], "", None
for ev in stream:
    kinds.append(ev.type)
    if ev.type == "response.output_text.delta":
        text += ev.delta
    if ev.type == "response.completed":
        final = ev.response
assert text == "Hello", text
assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed", kinds
assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta") < kinds.index("response.output_text.done"), kinds
assert final.output_text == "Hello" and final.usage.output_tokens == 2, final
# A streamed response is stored too, and continued.
r = client.responses.create(model="smart", input="after the stream", previous_response_id=final.id)
assert r.output_text == "echo: after the stream", r

# A streamed function call arrives as its events, arguments assembled.
stream = client.responses.create(model="smart", input="weather?", tools=tools, stream=True)
done = [ev.item for ev in stream if ev.type == "response.output_item.done"]
assert done and done[0].type == "function_call" and json.loads(done[0].arguments) == {"city": "Paris"}, done

# Errors arrive as the SDK's typed exceptions.
try:
    OpenAI(base_url=base, api_key="sk-steward-wrong", max_retries=0).responses.create(model="smart", input="x")
    raise AssertionError("a bad key was accepted")
except openai.AuthenticationError:
    pass
try:
    client.responses.create(model="smart", input="x", previous_response_id="resp_nothing")
    raise AssertionError("an unknown previous response was accepted")
except openai.NotFoundError:
    pass
try:
    client.responses.create(model="smart", input=[{"role": "robot", "content": "x"}])
    raise AssertionError("a bad role was accepted")
except openai.BadRequestError as e:
    assert "role" in str(e), e

print("openai responses: ok")
