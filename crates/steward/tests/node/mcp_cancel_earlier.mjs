// The official MCP TypeScript SDK — a client of the earlier revision (2025-11-25), which
// cancels a call by sending `notifications/cancelled` naming the call's request id —
// cancelling a tool call through Steward's /mcp.
//
// Run by crates/steward/tests/it/mcp_http.rs with STEWARD_BASE, STEWARD_KEY (an agent the policy
// lets call `guarded.slow` and `guarded.stats`) and MCP_SDK (the SDK's package directory). Calls
// `guarded.slow` for 30 s and aborts it after 1 s, then asks the upstream, through Steward, until
// it reports the call cancelled. Prints the upstream's counts; exits non-zero if the
// cancellation never reached it.
import { pathToFileURL } from "node:url";

const sdk = (p) => import(pathToFileURL(`${process.env.MCP_SDK}/dist/esm/${p}`).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");

const transport = new StreamableHTTPClientTransport(new URL(`${process.env.STEWARD_BASE}/mcp`), {
  requestInit: { headers: { Authorization: `Bearer ${process.env.STEWARD_KEY}` } },
});
const client = new Client({ name: "cancel-test", version: "1.0.0" });
await client.connect(transport);

const stats = async () => {
  const r = await client.callTool({ name: "guarded.stats", arguments: {} });
  if (r.isError) throw new Error(JSON.stringify(r));
  const sc = r.structuredContent ?? {};
  const v = "slow_done" in sc ? sc : JSON.parse(sc.content ?? sc.result ?? "{}");
  return v.result ?? v;
};

const abort = new AbortController();
const started = Date.now();
setTimeout(() => abort.abort("the caller changed its mind"), 1000);
let gaveUp = false;
try {
  await client.callTool({ name: "guarded.slow", arguments: { seconds: 30 } }, undefined, {
    signal: abort.signal,
    timeout: 60000,
  });
} catch (e) {
  gaveUp = true;
}
if (!gaveUp || Date.now() - started > 5000) {
  console.error("the call was not given up at once");
  process.exit(1);
}
let seen = {};
for (let i = 0; i < 100; i++) {
  seen = await stats();
  if (seen.slow_cancelled >= 1) break;
  await new Promise((r) => setTimeout(r, 100));
}
console.log(JSON.stringify(seen));
await client.close();
process.exit(seen.slow_cancelled >= 1 && seen.slow_done === 0 ? 0 : 1);
