// The judge of tests/test_clerk_differential.py: Clerk's own @clerk/backend verdicts on a corpus.
//
// stdin: {"now_ms", "configs": {name: {client, verify, auth}}, "cases": [{id, config, token,
//         verify, requests: [{name, url, method, headers}], has: [{role|permission}]}],
//         "publishable_keys": [...]}
// stdout: {"results": [{id, verify: {ok, reason, error}, requests: {name: {status, reason,
//          auth: {userId, sessionId, orgId, orgRole, orgPermissions, sessionStatus}, has}}}],
//          "suffixes": {publishable key: cookie suffix}}
//
// Date.now is frozen at now_ms, so both sides judge the same instant. Cases of one config run
// in order; configs run side by side (a wrong secret key costs @clerk/backend ~3 s of retries).
import { createClerkClient, verifyToken } from '@clerk/backend';
import { getCookieSuffix } from '@clerk/shared/keys';

const input = JSON.parse(await new Promise((resolve) => {
  let text = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => { text += chunk; });
  process.stdin.on('end', () => resolve(text));
}));

Date.now = () => input.now_ms;

const describe = (error) => ({
  ok: false,
  reason: error?.reason ?? null,
  error: error?.reason ? null : `${error?.name ?? 'Error'}: ${error?.message ?? error}`,
});

async function judgeVerify(token, options) {
  try {
    await verifyToken(token, options);
    return { ok: true, reason: null, error: null };
  } catch (error) {
    return describe(error);
  }
}

function authFacts(state, queries) {
  let auth;
  try {
    auth = state.toAuth();
  } catch (error) {
    return { auth: null, has: null, toAuthError: `${error?.name}: ${error?.message}` };
  }
  const facts = {
    userId: auth.userId ?? null,
    sessionId: auth.sessionId ?? null,
    orgId: auth.orgId ?? null,
    orgRole: auth.orgRole ?? null,
    orgPermissions: auth.orgPermissions ?? null,
    sessionStatus: auth.sessionStatus ?? null,
  };
  const has = queries.map((query) => {
    try {
      return typeof auth.has === 'function' ? auth.has(query) : null;
    } catch (error) {
      return `throw: ${error?.name}`;
    }
  });
  return { auth: facts, has, toAuthError: null };
}

async function judgeRequest(client, options, request, queries) {
  const req = new Request(request.url, { method: request.method ?? 'GET', headers: request.headers });
  let state;
  try {
    state = await client.authenticateRequest(req, options);
  } catch (error) {
    return { status: 'throw', reason: null, error: `${error?.name}: ${error?.message}` };
  }
  const out = { status: state.status, reason: state.reason ?? null };
  if (state.status === 'signed-in') Object.assign(out, authFacts(state, queries));
  return out;
}

const clients = {};
const client = (name) => {
  clients[name] ??= createClerkClient({ ...input.configs[name].client, telemetry: { disabled: true } });
  return clients[name];
};

async function judgeCase(item) {
  const config = input.configs[item.config];
  const requests = item.requests ?? [];
  // side by side: a wrong secret key costs each of them @clerk/backend's ~3 s of JWKS retries
  const [verify, ...answers] = await Promise.all([
    item.verify ? judgeVerify(item.token, config.verify) : null,
    ...requests.map((request) => judgeRequest(client(item.config), config.auth, request, item.has ?? [])),
  ]);
  const result = { id: item.id, requests: {} };
  if (item.verify) result.verify = verify;
  requests.forEach((request, i) => { result.requests[request.name] = answers[i]; });
  return result;
}

const byConfig = new Map();
for (const item of input.cases) {
  if (!byConfig.has(item.config)) byConfig.set(item.config, []);
  byConfig.get(item.config).push(item);
}
const groups = await Promise.all([...byConfig.values()].map(async (items) => {
  const done = [];
  for (const item of items) done.push(await judgeCase(item));
  return done;
}));
const results = groups.flat();

const suffixes = {};
for (const key of input.publishable_keys ?? []) suffixes[key] = await getCookieSuffix(key);

process.stdout.write(JSON.stringify({ results, suffixes }));
