// An upstream MCP server over stdio, on the official MCP TypeScript SDK (MCP_SDK: its package
// directory), that says who it runs as: `whoami` (uid, gid, HOME, working directory) and
// `read` (whether a path can be read, and if not why).
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const sdk = (p) => import(pathToFileURL(`${process.env.MCP_SDK}/dist/esm/${p}`).href);
const { McpServer } = await sdk("server/mcp.js");
const { StdioServerTransport } = await sdk("server/stdio.js");
// zod, the SDK's schema library, sits beside it in node_modules.
const { z } = await import(pathToFileURL(`${process.env.MCP_SDK}/../../zod/index.js`).href);

const server = new McpServer({ name: "probe", version: "1.0.0" });
const text = (v) => ({ content: [{ type: "text", text: JSON.stringify(v) }] });
server.tool("whoami", "Who this server runs as.", {}, async () =>
  text({ uid: process.getuid(), gid: process.getgid(), home: process.env.HOME, cwd: process.cwd() }),
);
server.tool("read", "Whether a file can be read.", { path: z.string() }, async ({ path }) => {
  try {
    readFileSync(path);
    return text({ read: true });
  } catch (e) {
    return text({ read: false, why: e.code });
  }
});
await server.connect(new StdioServerTransport());
