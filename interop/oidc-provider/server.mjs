// A real, independent authorization server for tokenwarden's interop tests: panva's
// OpenID-certified `oidc-provider`, configured the way a strict production server would be
// (PKCE required, refresh tokens rotated on every use with reuse detection, short access
// tokens), plus two test-only conveniences so no browser is needed:
//
//   GET  /interaction/:uid    logs in a fixed account and grants the requested scopes
//   POST /test/revoke-grant   revokes an account's grants at the server (user "disconnects")
//   GET  /test/stats          counts refresh and client-credentials grants seen, so tests can
//                             assert "exactly one"
//
// Usage: node server.mjs [port]   (or PORT=...; 0 or nothing = any free port)
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
const REDIRECT_URI = process.env.REDIRECT_URI ?? 'http://127.0.0.1/callback';
// The second client: an application, allowed only the client_credentials grant.
const APP_CLIENT_ID = process.env.APP_CLIENT_ID ?? 'tokenwarden-interop-app';
const APP_CLIENT_SECRET = process.env.APP_CLIENT_SECRET ?? 'interop-app-secret-not-for-production';
// Every login is this account: the tests drive the flow, not a person.
const ACCOUNT_ID = process.env.ACCOUNT_ID ?? 'interop-user-1';

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
    redirect_uris: [REDIRECT_URI],
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
    // The built-in login pages are replaced by the automatic route below.
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

provider.use(async (ctx, next) => {
  const interaction = ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (interaction && ctx.method === 'GET') {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params } = details;
    let result;
    if (prompt.name === 'login') {
      result = { login: { accountId: ACCOUNT_ID } };
    } else if (prompt.name === 'consent') {
      // Grant exactly what is missing, as a user clicking "Allow" would.
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
      result = { consent: { grantId } };
    } else {
      ctx.throw(400, `unexpected prompt ${prompt.name}`);
    }
    // Back to the authorization endpoint, which continues (or finishes) the flow.
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
      mergeWithLastSubmission: true,
    });
    ctx.status = 303;
    ctx.redirect(returnTo);
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
