// Local OpenID Provider for mailsluice's integration tests (oidc-provider 8.x; 9.x refuses Node 20).
//
// Started by tests/support/oidc.rs, one process per test:
//
//   node server.mjs <config.json> [--exit-on-stdin-eof]
//
// It listens on 127.0.0.1 with an ephemeral port, builds the Provider with issuer
// http://127.0.0.1:<port> once the port is known, and prints exactly one line on stdout:
// {"ready":true,"port":N}. Everything else (request log, provider events) goes to stderr.
// With --exit-on-stdin-eof it exits when its stdin closes, so a test process that dies without
// running destructors (SIGKILL, abort) does not leave the server behind.
//
// Config file: { "access_token_ttl_secs": 3600, "refresh_token_ttl_secs": 86400,
//                "users": [{ "email": "alice@example.test", "password": "..." }],
//                "app_mailbox": "shared@example.test",
//                "delegations": [{ "user": "alice@example.test", "mailbox": "shared@example.test" }],
//                "jwt_access_token_audience": null }
// (`delegations` and `jwt_access_token_audience` are optional; absent = off.)
//
// Behaviour that tests rely on:
// - Accounts: sub = the user's email (as configured); the `email` claim is the same value.
//   Access tokens are opaque and carry `email` as an extra claim, so Dovecot's introspection
//   (`username_attribute = email`) sees it. Client-credentials tokens of `svc` and
//   `collector-confidential` carry `email` = app_mailbox.
// - Delegations (optional): for a user listed there, the `email` extra claim of its access
//   tokens is the delegated mailbox instead of the user's own address (a delegate signed in for
//   a shared mailbox: Dovecot then accepts the token only with SASL user=<mailbox>). The ID
//   token and userinfo keep the user's own `email`; `sub` stays the user.
// - jwt_access_token_audience (optional, e.g. "https://graph.microsoft.com"): user access tokens
//   (authorization code, device code, refresh) are bound with resource indicators to a resource
//   server of that identifier and issued as RS256 JWTs (typ at+jwt) with `aud` = that value,
//   `scope` and `scp` (the granted scopes the resource knows: openid profile email mail), `email`
//   and `upn`, `exp`. Like a Microsoft Graph token handed to an IMAP collector: introspection
//   (hence Dovecot) does not know JWT access tokens, so they are refused. Refresh tokens stay
//   opaque and rotate as usual; client-credentials tokens stay opaque (no default resource).
// - Refresh tokens are issued whenever the client may use refresh_token and offline_access was
//   granted. oidc-provider drops offline_access at /auth unless prompt=consent is present (OIDC
//   Core 11); real providers (Entra ID) do not require that, so a request to /auth asking for
//   offline_access without prompt=consent gets `consent` added to its prompt.
// - Every refresh rotates the refresh token; presenting a spent one is invalid_grant and, by
//   oidc-provider's design, revokes the whole grant (all tokens of that login die).
// - Login: our own form at /interaction/:uid (GET shows it, POST email+password checks it);
//   consent is granted automatically with every requested scope. A wrong password re-renders the
//   form with HTTP 401. POST with abort=1 denies the request (access_denied).
// - State lives in memory: restarting the process invalidates every token.
//
// Test hooks (not OIDC):
//   GET  /test/issued       -> {"tokens":[...]}: every access, refresh and ID token issued at /token
//   GET  /test/stats        -> {"token_requests":{"<grant_type>":{"ok":n,"error":n,"injected":n}},
//                               "token_errors":{"<grant_type>":{"<error code>":n}}}
//   POST /test/faults       {"token_endpoint":[{"status":500},{"status":400,"error":"slow_down"},
//                             {"delay_ms":3000}]} appends to a FIFO; each POST /token consumes one
//                            entry. An entry with `status` replaces the reply (JSON body
//                            {"error":..., "error_description":...} or `body` verbatim, optional
//                            `headers`), after `delay_ms` if given; an entry with only `delay_ms`
//                            delays the real reply. Replaced replies count as outcome "error"
//                            (status >= 400) or "ok", plus "injected".
//   POST /test/revoke_user  {"email":...} revokes every grant, token and session of that user.
//   POST /test/reset_stats  zeroes the counters.

import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

import { Provider, errors } from 'oidc-provider';

// stdout carries only the readiness line; oidc-provider prints notices with console.info.
console.log = console.error;
console.info = console.error;

const log = (msg) => process.stderr.write(`${new Date().toISOString()} oidc: ${msg}\n`);

const configPath = process.argv[2];
if (!configPath) {
  log('usage: node server.mjs <config.json> [--exit-on-stdin-eof]');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const accessTtl = Number(config.access_token_ttl_secs ?? 3600);
const refreshTtl = Number(config.refresh_token_ttl_secs ?? 86400);
const appMailbox = String(config.app_mailbox ?? 'shared@example.test');
// Lower-cased user email -> mailbox its access tokens name in `email`.
const delegations = new Map(
  (config.delegations ?? []).map((d) => [String(d.user).toLowerCase(), String(d.mailbox)]),
);
// Resource indicator (and `aud`) of JWT user access tokens; null = opaque tokens, no resource.
const jwtAudience = config.jwt_access_token_audience ? String(config.jwt_access_token_audience) : null;
// Scopes the JWT resource server knows: what its access tokens carry in `scope`/`scp`.
const JWT_RESOURCE_SCOPE = 'openid profile email mail';
// Keyed by lower-cased email; the value keeps the configured spelling, which becomes `sub`.
const users = new Map(
  (config.users ?? []).map((u) => [String(u.email).toLowerCase(), { email: String(u.email), password: String(u.password) }]),
);
// Clients whose client-credentials tokens act for the shared application mailbox.
const APP_MAILBOX_CLIENTS = new Set(['svc', 'collector-confidential']);

if (process.argv.includes('--exit-on-stdin-eof')) {
  process.stdin.on('end', () => {
    log('stdin closed, exiting');
    process.exit(0);
  });
  process.stdin.resume();
}
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}

// ---------------------------------------------------------------------------------------------
// Storage: a Map-based adapter (the built-in one is a 1000-entry LRU without a way to find a
// user's grants). Entries: key "<Model>:<id>" -> { payload, expiresAt (ms) }.

const store = new Map();
const epochTime = () => Math.floor(Date.now() / 1000);

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry;
}

function findWhere(model, predicate) {
  for (const [key, entry] of store) {
    if (key.startsWith(`${model}:`) && predicate(entry.payload) && live(key)) return entry.payload;
  }
  return undefined;
}

class MemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(this.key(id), { payload, expiresAt });
  }

  async find(id) {
    return live(this.key(id))?.payload;
  }

  async findByUserCode(userCode) {
    return findWhere(this.model, (p) => p.userCode === userCode);
  }

  async findByUid(uid) {
    return findWhere(this.model, (p) => p.uid === uid);
  }

  async consume(id) {
    const entry = live(this.key(id));
    if (entry) entry.payload.consumed = epochTime();
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const [key, entry] of store) {
      if (entry.payload.grantId === grantId && !key.startsWith('Grant:')) store.delete(key);
    }
  }
}

/** Deletes every grant, token, code and session of `email`; returns how many entries died. */
function revokeUser(email) {
  const grantIds = new Set();
  let removed = 0;
  for (const [key, entry] of store) {
    const { payload } = entry;
    const accountId = payload.accountId ?? payload.account;
    if (typeof accountId === 'string' && accountId.toLowerCase() === email.toLowerCase()) {
      if (key.startsWith('Grant:')) grantIds.add(payload.jti);
      if (payload.grantId) grantIds.add(payload.grantId);
      store.delete(key);
      removed += 1;
    }
  }
  for (const [key, entry] of store) {
    if (grantIds.has(entry.payload.grantId) || grantIds.has(entry.payload.jti)) {
      store.delete(key);
      removed += 1;
    }
  }
  return removed;
}

// ---------------------------------------------------------------------------------------------
// Token endpoint statistics and injected faults.

let stats = { token_requests: {}, token_errors: {} };
// Every token this server handed out at /token, so tests can prove none leaks into a log.
const issued = [];
const tokenFaults = [];

function count(grantType, outcome, errorCode, injected) {
  const g = grantType || 'unknown';
  const byOutcome = (stats.token_requests[g] ??= { ok: 0, error: 0, injected: 0 });
  byOutcome[outcome] += 1;
  if (injected) byOutcome.injected += 1;
  if (errorCode) {
    const byCode = (stats.token_errors[g] ??= {});
    byCode[errorCode] = (byCode[errorCode] ?? 0) + 1;
  }
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

// Koa middleware (provider.use) wrapping POST /token.
async function tokenEndpointHooks(ctx, next) {
  if (ctx.method !== 'POST' || ctx.path !== '/token') return next();

  const fault = tokenFaults.shift();
  if (fault && fault.delay_ms) await sleep(Number(fault.delay_ms));
  if (fault && fault.status !== undefined) {
    // The provider never sees this request, so read the grant type ourselves.
    const grantType = new URLSearchParams(await readBody(ctx.req)).get('grant_type');
    const status = Number(fault.status);
    ctx.status = status;
    for (const [name, value] of Object.entries(fault.headers ?? {})) ctx.set(name, String(value));
    if (fault.body !== undefined) {
      ctx.body = fault.body;
    } else {
      const error = fault.error ?? (status >= 500 ? 'server_error' : 'invalid_request');
      ctx.body = { error, error_description: fault.error_description ?? `injected by /test/faults (${status})` };
    }
    const code = typeof ctx.body === 'object' ? ctx.body.error : undefined;
    count(grantType, status >= 400 ? 'error' : 'ok', status >= 400 ? (code ?? String(status)) : undefined, true);
    log(`token: grant_type=${grantType} injected status=${status}${fault.delay_ms ? ` after ${fault.delay_ms}ms` : ''}`);
    return undefined;
  }

  await next();
  const grantType = ctx.oidc?.params?.grant_type;
  const ok = ctx.status >= 200 && ctx.status < 300;
  if (ok && ctx.body && typeof ctx.body === 'object') {
    for (const k of ['access_token', 'refresh_token', 'id_token']) {
      if (typeof ctx.body[k] === 'string') issued.push(ctx.body[k]);
    }
  }
  const code = ok ? undefined : (ctx.body?.error ?? String(ctx.status));
  count(grantType, ok ? 'ok' : 'error', code, false);
  log(`token: grant_type=${grantType} client=${ctx.oidc?.client?.clientId} status=${ctx.status}${code ? ` error=${code} (${ctx.body?.error_description ?? ''})` : ''}${fault ? ` delayed ${fault.delay_ms}ms` : ''}`);
  return undefined;
}

// Koa middleware: offline_access at /auth without prompt=consent gets prompt=consent (see top).
async function offlineAccessImpliesConsent(ctx, next) {
  if (ctx.method === 'GET' && ctx.path === '/auth') {
    const scope = String(ctx.query.scope ?? '').split(' ');
    const prompt = String(ctx.query.prompt ?? '').split(' ').filter(Boolean);
    if (scope.includes('offline_access') && !prompt.includes('consent') && !prompt.includes('none')) {
      ctx.query = { ...ctx.query, prompt: [...prompt, 'consent'].join(' ') };
    }
  }
  return next();
}

// ---------------------------------------------------------------------------------------------
// HTML (deliberately plain: tests read it).

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body><h1>${esc(title)}</h1>
${body}
</body></html>`;

function loginPage(uid, details, error, email) {
  const err = error ? `<p class="error" id="error">${esc(error)}</p>\n` : '';
  return page('Sign-in', `${err}<p>Client: <code>${esc(details.params.client_id)}</code>, scope: <code>${esc(details.params.scope)}</code></p>
<form id="login" method="post" action="/interaction/${esc(uid)}">
<input type="email" name="email" value="${esc(email ?? details.params.login_hint ?? '')}" autofocus>
<input type="password" name="password">
<button type="submit">Sign in</button>
<button type="submit" name="abort" value="1">Cancel</button>
</form>`);
}

// ---------------------------------------------------------------------------------------------
// Provider.

function buildProvider(issuer) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' };

  const redirectUris = ['http://127.0.0.1/callback'];
  const deviceGrant = 'urn:ietf:params:oauth:grant-type:device_code';

  const provider = new Provider(issuer, {
    adapter: MemoryAdapter,
    clients: [
      {
        client_id: 'collector',
        token_endpoint_auth_method: 'none',
        application_type: 'native',
        redirect_uris: redirectUris,
        grant_types: ['authorization_code', 'refresh_token', deviceGrant],
        response_types: ['code'],
      },
      {
        client_id: 'collector-confidential',
        client_secret: 'collector-secret',
        token_endpoint_auth_method: 'client_secret_post',
        application_type: 'native',
        redirect_uris: redirectUris,
        grant_types: ['authorization_code', 'refresh_token', deviceGrant, 'client_credentials'],
        response_types: ['code'],
      },
      {
        client_id: 'svc',
        client_secret: 'svc-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
      {
        // Resource server: only authenticates to /token/introspection.
        client_id: 'dovecot',
        client_secret: 'dovecot-secret',
        token_endpoint_auth_method: 'client_secret_post',
        grant_types: [],
        response_types: [],
        redirect_uris: [],
      },
    ],
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    jwks: { keys: [signingKey] },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'mail'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'] },
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      deviceFlow: {
        enabled: true,
        async userCodeInputSource(ctx, form, out, err) {
          const msg = err ? `<p class="error" id="error">${esc(out?.error_description ?? err.message)}</p>` : '';
          ctx.body = page('Device sign-in', `${msg}\n${form}\n<button type="submit" form="op.deviceInputForm">Continue</button>`);
        },
        async userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
          ctx.body = page('Confirm device', `<p>Code <code id="user_code">${esc(userCode)}</code> for client <code>${esc(client.clientId)}</code></p>\n${form}\n<button type="submit" form="op.deviceConfirmForm">Continue</button>`);
        },
        async successSource(ctx) {
          ctx.body = page('Sign-in Success', '<p id="success">Your device is now signed in.</p>');
        },
      },
      introspection: {
        enabled: true,
        // Confidential clients (dovecot) may introspect any token; public ones only their own.
        async allowedPolicy(ctx, client, token) {
          return client.clientAuthMethod !== 'none' || token.clientId === client.clientId;
        },
      },
      revocation: { enabled: true },
      clientCredentials: { enabled: true },
      // Enabled by default in 8.x; without jwtAudience no resource is ever defaulted or accepted,
      // so access tokens stay opaque (the behaviour of the defaults).
      resourceIndicators: {
        enabled: true,
        async defaultResource(ctx, client, oneOf) {
          if (oneOf) return oneOf;
          // User flows only (authorization and device endpoints); at /token this is reached
          // only by client_credentials, whose tokens stay opaque.
          if (!jwtAudience || ctx.oidc.route === 'token') return undefined;
          return jwtAudience;
        },
        async useGrantedResource() {
          return jwtAudience !== null;
        },
        async getResourceServerInfo(ctx, resourceIndicator) {
          if (jwtAudience && resourceIndicator === jwtAudience) {
            return {
              scope: JWT_RESOURCE_SCOPE,
              audience: jwtAudience,
              accessTokenTTL: accessTtl,
              accessTokenFormat: 'jwt',
            };
          }
          throw new errors.InvalidTarget();
        },
      },
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    rotateRefreshToken: true,
    async issueRefreshToken(ctx, client, code) {
      return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
    },
    ttl: {
      AccessToken: accessTtl,
      ClientCredentials: accessTtl,
      RefreshToken: refreshTtl,
      AuthorizationCode: 60,
      DeviceCode: 600,
      IdToken: 3600,
      Interaction: 3600,
      // Grants and sessions end by revocation in tests, not by time.
      Grant: 365 * 24 * 3600,
      Session: 365 * 24 * 3600,
    },
    async findAccount(ctx, sub) {
      const user = users.get(String(sub).toLowerCase());
      if (!user) return undefined;
      return {
        accountId: user.email,
        async claims() {
          return { sub: user.email, email: user.email, email_verified: true };
        },
      };
    },
    async extraTokenClaims(ctx, token) {
      if (token.accountId) {
        const email = delegations.get(token.accountId.toLowerCase()) ?? token.accountId;
        // JWT (resource-bound) tokens look like Microsoft's: `upn` and `scp` besides `email`.
        if (token.resourceServer) return { email, upn: email, scp: token.scope || undefined };
        return { email };
      }
      if (token.kind === 'ClientCredentials' && APP_MAILBOX_CLIENTS.has(token.clientId)) return { email: appMailbox };
      return undefined;
    },
    async renderError(ctx, out, error) {
      ctx.type = 'html';
      ctx.body = page('Error', `<pre id="error">${esc(JSON.stringify(out))}</pre>`);
      log(`error page: ${JSON.stringify(out)}${error?.stack && !error.expose ? ` ${error.stack}` : ''}`);
    },
  });

  provider.use(offlineAccessImpliesConsent);
  provider.use(tokenEndpointHooks);

  for (const event of ['server_error', 'authorization.error', 'grant.error', 'introspection.error',
    'revocation.error', 'userinfo.error', 'check_session_origin.error', 'discovery.error',
    'end_session.error', 'interaction.error']) {
    provider.on(event, (ctx, err) => log(`${event}: ${err.name}: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}${err.error_detail ? ` [${err.error_detail}]` : ''}`));
  }
  return provider;
}

// ---------------------------------------------------------------------------------------------
// Interaction (login + automatic consent) and the /test hooks, served outside Koa.

async function grantEverything(details, accountId) {
  const { Grant } = provider;
  let grant;
  if (details.grantId) grant = await Grant.find(details.grantId);
  if (!grant || grant.accountId !== accountId) {
    grant = new Grant({ accountId, clientId: details.params.client_id });
  }
  if (details.params.scope) grant.addOIDCScope(details.params.scope);
  const missing = details.prompt.details ?? {};
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw Object.assign(new Error('interaction uid mismatch'), { status: 400 });

  if (req.method === 'GET') {
    if (details.prompt.name === 'login') {
      return send(res, 200, 'text/html; charset=utf-8', loginPage(uid, details));
    }
    // Consent only (an existing session): granted without asking.
    const accountId = details.session?.accountId;
    const grantId = await grantEverything(details, accountId);
    log(`interaction ${uid}: consent granted for ${accountId}`);
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }

  if (req.method === 'POST') {
    const form = new URLSearchParams(await readBody(req));
    if (form.get('abort')) {
      log(`interaction ${uid}: aborted by the user`);
      return provider.interactionFinished(req, res, {
        error: 'access_denied', error_description: 'End-User aborted interaction',
      }, { mergeWithLastSubmission: false });
    }
    const email = form.get('email') ?? form.get('login') ?? '';
    const user = users.get(email.toLowerCase());
    if (!user || user.password !== form.get('password')) {
      log(`interaction ${uid}: login rejected for ${JSON.stringify(email)}`);
      return send(res, 401, 'text/html; charset=utf-8', loginPage(uid, details, 'Invalid email or password.', email));
    }
    const grantId = await grantEverything(details, user.email);
    log(`interaction ${uid}: ${user.email} signed in, scope "${details.params.scope}" granted`);
    return provider.interactionFinished(req, res, {
      login: { accountId: user.email },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
  }
  return send(res, 405, 'text/plain', 'method not allowed');
}

async function testHooks(req, res, path) {
  const json = async () => {
    const text = await readBody(req);
    return text ? JSON.parse(text) : {};
  };
  if (req.method === 'GET' && path === '/test/stats') {
    return sendJson(res, 200, { ...stats, queued_token_faults: tokenFaults.length });
  }
  if (req.method === 'GET' && path === '/test/issued') {
    return sendJson(res, 200, { tokens: issued });
  }
  if (req.method === 'POST' && path === '/test/faults') {
    const body = await json();
    const faults = body.token_endpoint ?? [];
    if (!Array.isArray(faults)) return sendJson(res, 400, { error: 'token_endpoint must be an array' });
    tokenFaults.push(...faults);
    log(`test: queued ${faults.length} token endpoint fault(s), ${tokenFaults.length} pending`);
    return sendJson(res, 200, { queued: tokenFaults.length });
  }
  if (req.method === 'POST' && path === '/test/revoke_user') {
    const { email } = await json();
    if (typeof email !== 'string') return sendJson(res, 400, { error: 'email missing' });
    const removed = revokeUser(email);
    log(`test: revoked everything of ${email} (${removed} entries)`);
    return sendJson(res, 200, { removed });
  }
  if (req.method === 'POST' && path === '/test/reset_stats') {
    stats = { token_requests: {}, token_errors: {} };
    return sendJson(res, 200, {});
  }
  return sendJson(res, 404, { error: 'no such test hook' });
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

function sendJson(res, status, value) {
  send(res, status, 'application/json', JSON.stringify(value));
}

// ---------------------------------------------------------------------------------------------

let provider;
let providerCallback;

const server = http.createServer(async (req, res) => {
  const started = Date.now();
  const path = (req.url ?? '/').split('?')[0];
  res.on('finish', () => log(`${req.method} ${path} -> ${res.statusCode} (${Date.now() - started} ms)`));
  if (!providerCallback) return send(res, 503, 'text/plain', 'starting');
  try {
    if (path.startsWith('/test/')) return await testHooks(req, res, path);
    const m = path.match(/^\/interaction\/([^/]+)$/);
    if (m) return await interaction(req, res, m[1]);
    return providerCallback(req, res);
  } catch (err) {
    log(`${req.method} ${path} failed: ${err.stack ?? err}`);
    if (!res.headersSent) {
      const status = err.statusCode ?? err.status ?? 500;
      const body = page('Error', `<pre id="error">${esc(`${err.name}: ${err.message}`)}</pre>`);
      return send(res, status, 'text/html; charset=utf-8', body);
    }
    res.end();
    return undefined;
  }
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  provider = buildProvider(`http://127.0.0.1:${port}`);
  providerCallback = provider.callback();
  log(`listening on 127.0.0.1:${port}, access_token_ttl_secs=${accessTtl}, refresh_token_ttl_secs=${refreshTtl}, ${users.size} user(s), ${delegations.size} delegation(s), jwt_access_token_audience=${jwtAudience}`);
  process.stdout.write(`${JSON.stringify({ ready: true, port })}\n`);
});
