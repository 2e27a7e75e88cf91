"""An agent's own OpenTelemetry traces, exported to Steward with the official OTLP/HTTP
exporter (protobuf), authenticated by the agent's API key: an agent invocation with a model
call and a tool call beneath it, named by the GenAI conventions. Prints the trace id."""

import os

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

exporter = OTLPSpanExporter(
    endpoint=os.environ["STEWARD_BASE"] + "/v1/traces",
    headers={"authorization": "Bearer " + os.environ["STEWARD_KEY"]},
    timeout=10,
)
provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
provider.add_span_processor(BatchSpanProcessor(exporter))
tracer = provider.get_tracer("support-bot.agent")

with tracer.start_as_current_span("invoke_agent triage", kind=trace.SpanKind.INTERNAL) as root:
    root.set_attribute("gen_ai.operation.name", "invoke_agent")
    root.set_attribute("gen_ai.agent.name", "triage")
    with tracer.start_as_current_span("chat gpt-4o", kind=trace.SpanKind.CLIENT) as chat:
        chat.set_attribute("gen_ai.operation.name", "chat")
        chat.set_attribute("gen_ai.request.model", "gpt-4o")
        chat.set_attribute("gen_ai.usage.input_tokens", 42)
        chat.add_event("gen_ai.choice", {"finish_reason": "tool_calls"})
    with tracer.start_as_current_span("execute_tool lookup_order") as tool:
        tool.set_attribute("gen_ai.operation.name", "execute_tool")
        tool.set_attribute("gen_ai.tool.name", "lookup_order")
        tool.set_status(Status(StatusCode.ERROR, "order not found"))
    trace_id = format(root.get_span_context().trace_id, "032x")

assert provider.force_flush(10_000), "the exporter could not deliver the spans"
provider.shutdown()
print(trace_id)
