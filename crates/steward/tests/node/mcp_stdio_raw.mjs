// An upstream MCP server over stdio written against the wire, with no SDK, so that it can
// break its own promises: `shaped` declares an output schema ({n: integer}) and answers as it
// says; `misshaped` declares the same and answers {n: "three"}; `unshaped` declares it and
// answers with text only.
import { createInterface } from "node:readline";

const schema = { type: "object", required: ["n"], properties: { n: { type: "integer" } } };
const tool = (name) => ({ name, description: `${name} result`, inputSchema: { type: "object" }, outputSchema: schema });
const answers = {
  shaped: { content: [{ type: "text", text: "3" }], structuredContent: { n: 3 } },
  misshaped: { content: [{ type: "text", text: "three" }], structuredContent: { n: "three" } },
  unshaped: { content: [{ type: "text", text: "3" }] },
};
const send = (m) => process.stdout.write(JSON.stringify(m) + "\n");

for await (const line of createInterface({ input: process.stdin })) {
  let m;
  try {
    m = JSON.parse(line);
  } catch {
    continue;
  }
  if (m.id === undefined) continue; // a notification
  const result =
    m.method === "initialize"
      ? {
          protocolVersion: m.params?.protocolVersion ?? "2025-06-18",
          capabilities: { tools: {} },
          serverInfo: { name: "raw", version: "0.0.1" },
        }
      : m.method === "tools/list"
        ? { tools: Object.keys(answers).map(tool) }
        : m.method === "tools/call"
          ? answers[m.params.name]
          : m.method === "ping"
            ? {}
            : undefined;
  if (result === undefined) {
    send({ jsonrpc: "2.0", id: m.id, error: { code: -32601, message: `no method ${m.method}` } });
  } else {
    send({ jsonrpc: "2.0", id: m.id, result });
  }
}
