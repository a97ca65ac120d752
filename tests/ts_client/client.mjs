// Drive an MCP server with the official TypeScript SDK client (used by the Python tests as a subprocess).
//   node client.mjs <url> <http|sse> <toolName> '<json arguments>'
// Env: MCP_HEADERS  JSON object of extra headers sent on every request, e.g. {"Tenant-ID": "t1"}
//      MCP_TIMEOUT_MS  overall deadline (default 30000)
// Prints exactly one JSON line on stdout:
//   success (exit 0): {"tools": [<names>], "result": <CallToolResult>}
//   failure (exit 1): {"error": "<message>"} plus "status" (HTTP status) / "code" (JSON-RPC code) when known
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';

let done = false;
function finish(payload, code) {
  if (done) return;
  done = true;
  process.stdout.write(JSON.stringify(payload) + '\n', () => process.exit(code));
}

function errorPayload(err) {
  const out = { error: err instanceof Error ? err.message : String(err) };
  if (err?.cause?.message && !out.error.includes(err.cause.message)) out.error += `: ${err.cause.message}`;
  if (err instanceof McpError) {
    out.code = err.code; // JSON-RPC error code
  } else {
    // StreamableHTTPError / SseError carry the HTTP status in .code; SSE POST failures only in the message.
    const status = typeof err?.code === 'number' ? err.code : Number(/\(HTTP (\d{3})\)/.exec(out.error)?.[1]);
    if (status >= 100 && status <= 599) out.status = status;
  }
  return out;
}

async function main() {
  const [url, transportName, toolName, rawArgs = '{}'] = process.argv.slice(2);
  if (!url || !['http', 'sse'].includes(transportName) || !toolName) {
    throw new Error("usage: node client.mjs <url> <http|sse> <toolName> '<json arguments>'");
  }
  const args = JSON.parse(rawArgs);
  const headers = Object.fromEntries(
    Object.entries(JSON.parse(process.env.MCP_HEADERS || '{}')).map(([k, v]) => [k, String(v)]),
  );

  let transport;
  if (transportName === 'http') {
    transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
  } else {
    // requestInit.headers covers the POSTs and (in SDK 1.32) the SSE GET too; eventSourceInit.fetch only wraps
    // the GET and is kept as a belt-and-braces guarantee that the long-lived stream carries the headers.
    const sseFetch = (input, init) => {
      const h = new Headers(init?.headers);
      for (const [k, v] of Object.entries(headers)) h.set(k, v);
      return fetch(input, { ...init, headers: h });
    };
    transport = new SSEClientTransport(new URL(url), { requestInit: { headers }, eventSourceInit: { fetch: sseFetch } });
  }

  const client = new Client({ name: 'tenantry-ts-test-client', version: '0.0.0' });
  try {
    await client.connect(transport);
    const tools = [];
    let cursor;
    do {
      const page = await client.listTools(cursor ? { cursor } : undefined);
      tools.push(...page.tools.map((t) => t.name));
      cursor = page.nextCursor;
    } while (cursor);
    const result = await client.callTool({ name: toolName, arguments: args });
    return { tools, result };
  } finally {
    // Streamable HTTP: end the server-side session (DELETE) if there is one; ignore failures here.
    if (transport.sessionId) await transport.terminateSession().catch(() => {});
    await client.close().catch(() => {});
  }
}

const timeoutMs = Number(process.env.MCP_TIMEOUT_MS || 30000);
setTimeout(() => finish({ error: `timeout after ${timeoutMs}ms` }, 1), timeoutMs).unref();
main().then(
  (out) => finish(out, 0),
  (err) => finish(errorPayload(err), 1),
);
