// A real, independent authorization server for tokenwarden's interop tests: panva's
// OpenID-certified `oidc-provider`, configured the way a strict production server would be
// (PKCE required, refresh tokens rotated on every use with reuse detection, short access
// tokens), plus test-only routes:
//
//   GET  /interaction/:uid    by default logs in a fixed account (ACCOUNT_ID) and grants the
//                             requested scopes, so no browser is needed
//   POST /test/revoke-grant   revokes an account's grants at the server (user "disconnects");
//                             ?account=ID, default ACCOUNT_ID
//   GET  /test/stats          counts refresh and client-credentials grants seen, so tests can
//                             assert "exactly one"
//
// With INTERACTIVE=1 a person (or interop/browser/connect.mjs driving headless chromium)
// answers instead, on small plain-HTML pages without external resources:
//
//   GET  /interaction/:uid           login: a form with a `username` field and "Sign in";
//                                    consent: the requested scopes, "Allow" and "Deny"
//   POST /interaction/:uid/login     username=NAME logs in account NAME (empty: 400)
//   POST /interaction/:uid/confirm   "Allow": grants what is missing, as the default mode does
//   POST /interaction/:uid/abort     "Deny": the client gets error=access_denied
//
// Every authorization response, success or error, carries `iss` (RFC 9207): oidc-provider 9
// adds it without a feature flag (unless an ID token or a JWT response mode is used, neither
// of which this client does) and its discovery document says
// `authorization_response_iss_parameter_supported: true`. Checked with curl on 9.13.3.
//
// Usage: node server.mjs [port]   (or PORT=...; 0 or nothing = any free port)
// Environment: PORT, AT_TTL and RT_TTL (token lifetimes, seconds), CLIENT_ID, CLIENT_SECRET,
// REDIRECT_URI (comma-separated list), APP_CLIENT_ID, APP_CLIENT_SECRET, ACCOUNT_ID,
// INTERACTIVE=1.
// Prints `LISTENING http://127.0.0.1:NNNNN` once it accepts requests. Everything is in
// memory: each start is a clean server. This is test scaffolding, never a deployment.

import http from 'node:http';
import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const seconds = (name, fallback) => {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer`);
  return value;
};
// Short by default so tests see several expiries in a few seconds of real time.
const accessTokenTtl = seconds('AT_TTL', 2);
const refreshTokenTtl = seconds('RT_TTL', 120);

// The one confidential client. The secret is a fixed test value known to the tests.
const CLIENT_ID = process.env.CLIENT_ID ?? 'tokenwarden-interop';
const CLIENT_SECRET = process.env.CLIENT_SECRET ?? 'interop-client-secret-not-for-production';
// One or more redirect URIs, comma-separated (a browser test adds its own callback server).
const REDIRECT_URIS = (process.env.REDIRECT_URI ?? 'http://127.0.0.1/callback')
  .split(',').map((uri) => uri.trim()).filter(Boolean);
// The second client: an application, allowed only the client_credentials grant.
const APP_CLIENT_ID = process.env.APP_CLIENT_ID ?? 'tokenwarden-interop-app';
const APP_CLIENT_SECRET = process.env.APP_CLIENT_SECRET ?? 'interop-app-secret-not-for-production';
// Every automatic login is this account: the tests drive the flow, not a person.
const ACCOUNT_ID = process.env.ACCOUNT_ID ?? 'interop-user-1';
// INTERACTIVE=1: login and consent pages instead of the automatic interaction.
const INTERACTIVE = process.env.INTERACTIVE === '1';

// The issuer must contain the real port, which with port 0 is only known after binding, so
// bind first and hand requests to the provider once it exists.
let handle = (_req, res) => { res.statusCode = 503; res.end(); };
const server = http.createServer((req, res) => handle(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, HOST, resolve);
});
const issuer = `http://${HOST}:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
    redirect_uris: REDIRECT_URIS,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  }, {
    client_id: APP_CLIENT_ID,
    client_secret: APP_CLIENT_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
    redirect_uris: [],
    grant_types: ['client_credentials'],
    response_types: [],
  }],
  // PKCE for every client, not just public ones (the default only forces it for those).
  pkce: { required: () => true },
  // Refresh tokens for every code grant of a client allowed to refresh, without the
  // offline_access + prompt=consent dance; and not tied to the login session, like the
  // long-lived server-side connections tokenwarden holds.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  // Rotate on every use. oidc-provider then treats a second use of a rotated refresh token
  // as theft: it answers invalid_grant and revokes the whole grant. A broker that refreshed
  // the same connection twice would lose it.
  rotateRefreshToken: true,
  ttl: {
    AccessToken: accessTokenTtl,
    ClientCredentials: accessTokenTtl,
    RefreshToken: refreshTokenTtl,
    AuthorizationCode: 60,
    Interaction: 60,
    Session: 600,
    Grant: 600,
  },
  features: {
    // The built-in login pages are replaced by the routes below (automatic or INTERACTIVE).
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    introspection: { enabled: true },
    clientCredentials: { enabled: true },
  },
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  // Fixed keys: cookies only need to survive one test run.
  cookies: { keys: ['interop-cookie-key-not-secret'] },
});

// Grants created by the automatic consent, per account, for /test/revoke-grant (the
// in-memory adapter cannot search by account).
const grantsByAccount = new Map();
const stats = {
  refreshGrants: 0, clientCredentialsGrants: 0, refreshErrors: 0, reuseDetected: 0, grantsRevoked: 0, adminRevocations: 0,
};

provider.on('grant.success', (ctx) => {
  if (ctx.oidc.params?.grant_type === 'refresh_token') stats.refreshGrants += 1;
  if (ctx.oidc.params?.grant_type === 'client_credentials') stats.clientCredentialsGrants += 1;
});
provider.on('grant.error', (ctx, err) => {
  if (ctx.oidc.params?.grant_type !== 'refresh_token') return;
  stats.refreshErrors += 1;
  // Clients only see the generic "grant request is invalid"; the reason is in error_detail.
  if (err.error_detail === 'refresh token already used') stats.reuseDetected += 1;
  // One line per failure helps when a test fails; error codes only, no token values.
  console.error(`refresh failed: ${err.error} (${err.error_detail ?? err.error_description})`);
});
provider.on('grant.revoked', () => { stats.grantsRevoked += 1; });

// Grants exactly what the consent prompt says is missing, as a user clicking "Allow" would,
// and records the grant for /test/revoke-grant. Shared by the automatic and interactive modes.
async function grantMissing(details) {
  const { prompt, params } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  const ids = grantsByAccount.get(grant.accountId) ?? new Set();
  ids.add(grantId);
  grantsByAccount.set(grant.accountId, ids);
  return grantId;
}

// Hands the result to the provider and sends the browser back to the authorization endpoint,
// which continues (or finishes) the flow. Errors replace, never merge with, earlier results.
async function finishInteraction(ctx, result) {
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: !('error' in result),
  });
  ctx.status = 303;
  ctx.redirect(returnTo);
}

// --- INTERACTIVE=1 pages ---------------------------------------------------------------------
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function sendPage(ctx, title, body) {
  ctx.status = 200;
  ctx.type = 'text/html; charset=utf-8';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body>
<h1>${escapeHtml(title)}</h1>
${body}
</body>
</html>
`;
}

function loginPage(ctx, uid) {
  const action = `/interaction/${encodeURIComponent(uid)}/login`;
  sendPage(ctx, 'Sign in', `<form method="post" action="${escapeHtml(action)}">
<label for="username">Username</label>
<input type="text" id="username" name="username" autocomplete="username" required autofocus>
<button type="submit">Sign in</button>
</form>`);
}

function consentPage(ctx, details) {
  const { uid, params, session } = details;
  const base = `/interaction/${encodeURIComponent(uid)}`;
  const scopes = String(params.scope ?? '').split(' ').filter(Boolean);
  const items = scopes.map((scope) => `<li>${escapeHtml(scope)}</li>`).join('\n');
  const button = (action, label) => {
    const url = escapeHtml(`${base}/${action}`);
    return `<form method="post" action="${url}"><button type="submit">${label}</button></form>`;
  };
  sendPage(ctx, 'Authorize access', `<p>${escapeHtml(params.client_id)} asks for access to the
account ${escapeHtml(session?.accountId ?? '')} with these scopes:</p>
<ul>
${items}
</ul>
${button('confirm', 'Allow')}
${button('abort', 'Deny')}`);
}

// The provider parses bodies only on its own routes, so ours read the raw request.
async function formBody(ctx) {
  if (!ctx.is('application/x-www-form-urlencoded')) ctx.throw(415, 'expected a form');
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > 16384) ctx.throw(413, 'form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function interactive(ctx, uid, action) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== uid) ctx.throw(400, 'interaction mismatch');
  const { prompt } = details;
  if (ctx.method === 'GET' && action === undefined) {
    if (prompt.name === 'login') return loginPage(ctx, uid);
    if (prompt.name === 'consent') return consentPage(ctx, details);
    ctx.throw(400, `unexpected prompt ${prompt.name}`);
  }
  if (ctx.method !== 'POST') ctx.throw(405);
  if (action === 'login' && prompt.name === 'login') {
    const username = ((await formBody(ctx)).get('username') ?? '').trim();
    if (!username) ctx.throw(400, 'username is required');
    return finishInteraction(ctx, { login: { accountId: username } });
  }
  if (action === 'confirm' && prompt.name === 'consent') {
    return finishInteraction(ctx, { consent: { grantId: await grantMissing(details) } });
  }
  if (action === 'abort') {
    return finishInteraction(ctx, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    });
  }
  ctx.throw(400, `cannot ${action} during ${prompt.name}`);
}

provider.use(async (ctx, next) => {
  const interaction = ctx.path.match(/^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/);
  if (interaction && INTERACTIVE) {
    await interactive(ctx, interaction[1], interaction[2]);
    return;
  }
  if (interaction && !interaction[2] && ctx.method === 'GET') {
    // Automatic mode: a fixed account, and consent to whatever is missing.
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt } = details;
    let result;
    if (prompt.name === 'login') {
      result = { login: { accountId: ACCOUNT_ID } };
    } else if (prompt.name === 'consent') {
      result = { consent: { grantId: await grantMissing(details) } };
    } else {
      ctx.throw(400, `unexpected prompt ${prompt.name}`);
    }
    await finishInteraction(ctx, result);
    return;
  }

  if (ctx.path === '/test/revoke-grant' && ctx.method === 'POST') {
    // What a user revoking the app in their account settings does: every token of every
    // grant of the account dies, and the grant itself is gone.
    const account = ctx.query.account ?? ACCOUNT_ID;
    const ids = [...(grantsByAccount.get(account) ?? [])];
    for (const grantId of ids) {
      await Promise.all([
        provider.AccessToken.revokeByGrantId(grantId),
        provider.RefreshToken.revokeByGrantId(grantId),
        provider.AuthorizationCode.revokeByGrantId(grantId),
        provider.Grant.adapter.destroy(grantId),
      ]);
    }
    grantsByAccount.delete(account);
    stats.adminRevocations += ids.length;
    ctx.body = { revoked: ids.length };
    return;
  }

  if (ctx.path === '/test/stats' && ctx.method === 'GET') {
    ctx.body = stats;
    return;
  }

  await next();
});

handle = provider.callback();
// The tests read the port from this line.
console.log(`LISTENING ${issuer}`);

// Exit cleanly when the test harness closes our stdin or signals us.
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
