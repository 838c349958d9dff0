// @clerk/backend's Backend API client against FakeClerk (tests/test_clerk_sdk_compat.py).
//
// stdin: {"apiUrl", "steps": [{"name", "secretKey", "call", "args": [...]}]}, run in order
// (the Python side queues FakeClerk's faults for that order).
// stdout: {"results": {name: {ok: true, value} | {ok: false, error: {name, status, message,
//          errors: [{code, message, longMessage, meta}], clerkTraceId, retryAfter}}}}
import { createClerkClient } from '@clerk/backend';

const input = JSON.parse(await new Promise((resolve) => {
  let text = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => { text += chunk; });
  process.stdin.on('end', () => resolve(text));
}));

const calls = {
  getSession: (c, id) => c.sessions.getSession(id),
  getUser: (c, id) => c.users.getUser(id),
  getOrganization: (c, params) => c.organizations.getOrganization(params),
  getToken: (c, sid, template, expiresIn) => c.sessions.getToken(sid, template, expiresIn),
  listJwtTemplates: (c, params) => c.jwtTemplates.list(params),
  getJwtTemplate: (c, id) => c.jwtTemplates.get(id),
  getHandshakePayload: (c, params) => c.clients.getHandshakePayload(params),
  getJwks: (c) => c.jwks.getJwks(),
};

// Class instances (Session, User, ...) as plain JSON, with their class name.
const plain = (value) => JSON.parse(JSON.stringify(value, (key, v) => {
  if (v && typeof v === 'object' && !Array.isArray(v) && v.constructor && v.constructor !== Object) {
    return { __class: v.constructor.name.replace(/^_+/, ''), ...v };
  }
  return v;
}));

const results = {};
for (const step of input.steps) {
  const client = createClerkClient({ secretKey: step.secretKey, apiUrl: input.apiUrl, telemetry: { disabled: true } });
  try {
    results[step.name] = { ok: true, value: plain(await calls[step.call](client, ...(step.args ?? []))) };
  } catch (error) {
    results[step.name] = {
      ok: false,
      error: {
        name: error?.name ?? null,
        status: error?.status ?? null,
        message: error?.message ?? null,
        errors: (error?.errors ?? []).map((e) => ({
          code: e.code, message: e.message, longMessage: e.longMessage ?? null, meta: plain(e.meta ?? {}),
        })),
        clerkTraceId: error?.clerkTraceId ?? null,
        retryAfter: error?.retryAfter ?? null,
      },
    };
  }
}
process.stdout.write(JSON.stringify({ results }));
