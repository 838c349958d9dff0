// Tinybird's TypeScript SDK (@tinybirdco/sdk) against FakeTinybird, driven by
// tests/test_tinybird_clients.py: a batch of cases as JSON on stdin, one JSON object of results
// on stdout. Secrets listed in the input never reach stdout (replaced by "<secret>").
//
// Case kinds:
//   query  createClient({baseUrl, token}).query(pipe, params)  -> the parsed QueryResult or the
//          TinybirdError (statusCode, message, response, isAuthError(), isRateLimitError())
//   raw    createTinybirdApi(...).request(path)  -> status, headers, text (the SDK's raw
//          request: CSV/NDJSON bodies and rate-limit headers, which query() does not expose)
//   sql    createTinybirdApi(...).sql(sql)  -> parsed JSON or the TinybirdApiError
//   burst  `count` query() calls, then one raw request
import { readFileSync } from "node:fs";
import { createClient, createTinybirdApi, TinybirdApiError, TinybirdError } from "@tinybirdco/sdk";

const sdkPackage = new URL("./node_modules/@tinybirdco/sdk/package.json", import.meta.url);
const version = JSON.parse(readFileSync(sdkPackage, "utf8")).version;

function describe(error) {
  if (error instanceof TinybirdError || error instanceof TinybirdApiError) {
    return {
      class: error.constructor.name,
      name: error.name,
      statusCode: error.statusCode,
      message: error.message,
      response: error.response ?? null,
      isAuthError: typeof error.isAuthError === "function" ? error.isAuthError() : null,
      isRateLimitError: typeof error.isRateLimitError === "function" ? error.isRateLimitError() : null,
    };
  }
  throw error;
}

async function outcome(call) {
  try {
    return { ok: true, value: await call() };
  } catch (error) {
    return { ok: false, error: describe(error) };
  }
}

const HEADERS = [
  "content-type",
  "retry-after",
  "x-ratelimit-limit",
  "x-ratelimit-remaining",
  "x-ratelimit-reset",
  "access-control-allow-origin",
];

async function raw(api, path) {
  const response = await api.request(path);
  const headers = Object.fromEntries(HEADERS.map((name) => [name, response.headers.get(name)]));
  return { status: response.status, headers, text: await response.text() };
}

async function run(c) {
  const client = createClient({ baseUrl: c.base_url, token: c.token });
  const api = createTinybirdApi({ baseUrl: c.base_url, token: c.token });
  switch (c.kind) {
    case "query":
      return outcome(() => client.query(c.pipe, c.params ?? {}));
    case "raw":
      return raw(api, c.path);
    case "sql":
      return outcome(() => api.sql(c.sql));
    case "burst": {
      const calls = [];
      for (let i = 0; i < c.count; i += 1) {
        calls.push(await outcome(() => client.query(c.pipe, c.params ?? {})));
      }
      return { calls, raw: await raw(api, c.path) };
    }
    default:
      throw new Error(`unknown case kind ${c.kind}`);
  }
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const results = {};
for (const c of input.cases) {
  try {
    results[c.id] = await run(c);
  } catch (error) {
    results[c.id] = { unexpected: `${error?.name}: ${error?.message}` };
  }
}
let out = JSON.stringify({ client: "@tinybirdco/sdk", version, results });
for (const secret of input.secrets ?? []) out = out.split(secret).join("<secret>");
process.stdout.write(out);
