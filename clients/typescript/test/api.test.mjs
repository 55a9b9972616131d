// The client against a real `tokenwarden serve`: every /v1 route it has a method for, the
// answers it turns into values, and the errors it turns into TokenwardenError.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { inspect } from "node:util";

import { Tokenwarden, TokenwardenError, TokenwardenNetworkError } from "../dist/index.js";
import { API_KEY, closedPort, startFakeProvider, startTokenwarden } from "./harness.mjs";

const PAST = "2020-01-01T00:00:00Z";
const RETURN_URL = "http://127.0.0.1:9/done";

/** `fetch` that counts the requests it passes on. */
function countingFetch() {
  const requests = [];
  const wrapped = (input, init) => {
    requests.push({ url: String(input), method: init?.method ?? "GET" });
    return fetch(input, init);
  };
  wrapped.requests = requests;
  return wrapped;
}

/** Asserts that `promise` rejects with a TokenwardenError like `expected`; returns it. */
async function rejectsWith(promise, expected) {
  let caught;
  await assert.rejects(promise, (error) => {
    caught = error;
    return error instanceof TokenwardenError;
  });
  for (const [field, value] of Object.entries(expected)) {
    assert.deepEqual(caught[field], value, `${field} of ${inspect(caught)}`);
  }
  return caught;
}

describe("Tokenwarden against tokenwarden serve", () => {
  let provider;
  let server;
  let tw;

  before(async () => {
    provider = await startFakeProvider();
    server = await startTokenwarden(`
[connect]
return_urls = ["${RETURN_URL}"]

[providers.fake]
kind = "oauth2"
client_id = "client-id-1"
client_secret = "client-secret-1"
token_url = "${provider.url}/token"
authorization_url = "${provider.url}/authorize"
api_base_url = "${provider.url}/api"

[providers.flaky]
kind = "oauth2"
client_id = "client-id-2"
client_secret = "client-secret-2"
token_url = "${provider.url}/down/token"

[providers.billing]
kind = "oauth2"
grant = "client_credentials"
client_id = "client-id-3"
client_secret = "client-secret-3"
token_url = "${provider.url}/token"
`);
    tw = new Tokenwarden({ baseUrl: server.baseUrl, apiKey: API_KEY });
  });

  after(async () => {
    await server?.stop();
    await provider?.close();
  });

  const importRef = { user_id: "u-import", provider: "fake", account_id: "acct-1" };

  it("imports a connection (created, then replaced) and reads it back without secrets", async () => {
    const body = {
      access_token: "at-import-1",
      refresh_token: "rt-import-1",
      expires_in: 3600,
      scopes: ["read", "write"],
      metadata: { plan: "pro" },
    };
    const first = await tw.importConnection(importRef, body);
    assert.equal(first.created, true);
    assert.equal(first.connection.status, "active");
    assert.equal(first.connection.has_refresh_token, true);
    assert.deepEqual(first.connection.scopes, ["read", "write"]);
    assert.deepEqual(first.connection.metadata, { plan: "pro" });
    const second = await tw.importConnection(importRef, body);
    assert.equal(second.created, false);

    const view = await tw.getConnection(importRef);
    assert.equal(view.user_id, "u-import");
    assert.equal(view.provider, "fake");
    assert.equal(view.account_id, "acct-1");
    const text = JSON.stringify(view);
    assert.ok(!text.includes("at-import-1") && !text.includes("rt-import-1"), text);
  });

  it("getAccessToken answers the token and its expiry, and keeps the token out of prints", async () => {
    const before = provider.calls.length;
    const token = await tw.getAccessToken(importRef);
    assert.equal(token.accessToken, "at-import-1");
    assert.equal(token.tokenType, "Bearer");
    assert.equal(token.authorization, "Bearer at-import-1");
    assert.ok(token.expiresAt instanceof Date);
    const left = token.expiresAt.getTime() - Date.now();
    assert.ok(left > 3500_000 && left <= 3600_000, `expires in ${left} ms`);
    assert.equal(provider.calls.length, before, "a fresh token needs no provider call");
    for (const shown of [inspect(token), JSON.stringify(token), String(token), `${token}`]) {
      assert.ok(!shown.includes("at-import-1"), shown);
      assert.ok(shown.includes("[redacted]"), shown);
    }
    assert.ok(!inspect(tw, { showHidden: true }).includes(API_KEY));
  });

  it("refreshes an expired token on the way, and on request with retry options", async () => {
    const ref = { user_id: "u-refresh", provider: "fake", account_id: "acct-r" };
    await tw.importConnection(ref, {
      access_token: "at-old",
      refresh_token: "rt-refresh",
      expires_at: PAST,
    });
    const refreshes = () => provider.count((c) => c.refresh_token === "rt-refresh");
    const token = await tw.getAccessToken(ref);
    assert.match(token.accessToken, /^at-refreshed-\d+$/);
    assert.equal(refreshes(), 1);

    const view = await tw.refresh(ref);
    assert.equal(refreshes(), 2, "a forced refresh calls the provider");
    assert.equal(view.status, "active");
    assert.ok(view.last_refreshed_at);
    const again = await tw.getAccessToken(ref);
    assert.notEqual(again.accessToken, token.accessToken, "the forced refresh's new token");

    const withOptions = await tw.refresh(ref, { max_retries: 0, initial_delay_ms: 1 });
    assert.equal(withOptions.account_id, "acct-r");
    assert.equal(refreshes(), 3);
  });

  it("lists connections page by page, and all of them through the iterator", async () => {
    const accounts = ["p0", "p1", "p2", "p3", "p4", "p5", "p6"];
    for (const account_id of accounts) {
      await tw.importConnection(
        { user_id: "u-pager", provider: "fake", account_id },
        { access_token: `at-${account_id}`, expires_in: 3600 },
      );
    }
    const first = await tw.listConnectionsPage({ user_id: "u-pager", limit: 3 });
    assert.equal(first.items.length, 3);
    assert.equal(typeof first.next_cursor, "string");
    const secondPage = await tw.listConnectionsPage({
      user_id: "u-pager",
      limit: 3,
      cursor: first.next_cursor,
    });
    assert.equal(secondPage.items.length, 3);

    const counting = countingFetch();
    const client = new Tokenwarden({ baseUrl: server.baseUrl, apiKey: API_KEY, fetch: counting });
    const sizes = [];
    const paged = [];
    for await (const page of client.listConnections({ user_id: "u-pager", limit: 3 }).pages()) {
      sizes.push(page.items.length);
      paged.push(...page.items.map((c) => c.account_id));
    }
    assert.deepEqual(sizes, [3, 3, 1]);
    assert.equal(counting.requests.length, 3);
    assert.deepEqual([...paged].sort(), accounts);
    assert.deepEqual(paged.slice(0, 3), first.items.map((c) => c.account_id));

    const iterated = [];
    for await (const connection of client.listConnections({ user_id: "u-pager", limit: 3 })) {
      iterated.push(connection.account_id);
    }
    assert.deepEqual(iterated, paged, "the iterator goes through the same pages in order");
    assert.equal(counting.requests.length, 6);
    const all = await tw.listConnections({ user_id: "u-pager" }).toArray();
    assert.equal(all.length, 7);
    const none = await tw.listConnections({ user_id: "u-pager", status: "needs_reconnect" }).toArray();
    assert.deepEqual(none, []);
  });

  it("404: ACCOUNT_NOT_FOUND, with details and the request id", async () => {
    const missing = { user_id: "u-nobody", provider: "fake", account_id: "missing" };
    const error = await rejectsWith(tw.getConnection(missing), {
      status: 404,
      code: "ACCOUNT_NOT_FOUND",
      reconnect: false,
      retryAfter: null,
    });
    assert.equal(error.details.account_id, "missing");
    assert.ok(error.requestId, "the server's X-Request-Id");
    await rejectsWith(tw.deleteConnection(missing), { status: 404, code: "ACCOUNT_NOT_FOUND" });
    await rejectsWith(tw.getAccessToken(missing), { status: 404, code: "ACCOUNT_NOT_FOUND" });
  });

  it("409 with reconnect: a revoked grant, and an expired token without refresh token", async () => {
    const revoked = { user_id: "u-revoked", provider: "fake", account_id: "acct-x" };
    await tw.importConnection(revoked, {
      access_token: "at-revoked",
      refresh_token: "rt-revoked-1",
      expires_at: PAST,
    });
    const error = await rejectsWith(tw.getAccessToken(revoked), {
      status: 409,
      code: "TOKEN_EXPIRED",
      reconnect: true,
    });
    assert.equal(error.details.failure, "permanent");
    assert.equal((await tw.getConnection(revoked)).status, "needs_reconnect");
    const needing = await tw.listConnections({ status: "needs_reconnect" }).toArray();
    assert.deepEqual(
      needing.map((c) => c.user_id),
      ["u-revoked"],
    );
    await rejectsWith(tw.refresh(revoked), { status: 409, code: "TOKEN_EXPIRED", reconnect: true });

    const noRefresh = { user_id: "u-norefresh", provider: "fake", account_id: "acct-n" };
    await tw.importConnection(noRefresh, { access_token: "at-n", expires_at: PAST });
    await rejectsWith(tw.getAccessToken(noRefresh), {
      status: 409,
      code: "NO_REFRESH_TOKEN",
      reconnect: true,
    });
  });

  it("503 with retryAfter while the provider's circuit breaker is open", async () => {
    const ref = { user_id: "u-flaky", provider: "flaky", account_id: "acct-f" };
    await tw.importConnection(ref, {
      access_token: "at-f",
      refresh_token: "rt-flaky",
      expires_at: PAST,
    });
    const down = () => provider.count((c) => c.path === "/down/token");
    // max_retries 0: one call per refresh (the configured default would make two).
    await rejectsWith(tw.refresh(ref, { max_retries: 0 }), {
      status: 502,
      code: "TOKEN_REFRESH_ERROR",
      reconnect: false,
    });
    assert.equal(down(), 1);
    await assert.rejects(tw.refresh(ref, { max_retries: 0 }), TokenwardenError);
    assert.equal(down(), 2, "the second failure opens the breaker (threshold 2)");

    const open = await rejectsWith(tw.getAccessToken(ref), {
      status: 503,
      code: "TOKEN_REFRESH_ERROR",
      reconnect: false,
    });
    assert.ok(open.retryAfter > 0 && open.retryAfter <= 60, `retryAfter ${open.retryAfter}`);
    assert.equal(down(), 2, "an open breaker does not call the provider");
    const flaky = (await tw.providers()).find((p) => p.name === "flaky");
    assert.equal(flaky.breaker.state, "open");
  });

  it("401 UNAUTHORIZED for a wrong key, which no error shows", async () => {
    const wrongKey = "wrong-key-0123456789abcdef";
    const client = new Tokenwarden({ baseUrl: server.baseUrl, apiKey: wrongKey });
    const error = await rejectsWith(client.providers(), { status: 401, code: "UNAUTHORIZED" });
    for (const shown of [error.message, inspect(error), JSON.stringify(error), String(error.stack)]) {
      assert.ok(!shown.includes(wrongKey), shown);
    }
    assert.ok(!inspect(client, { showHidden: true }).includes(wrongKey));
  });

  it("400 names the field or the provider", async () => {
    const unknown = await rejectsWith(
      tw.importConnection({ ...importRef, provider: "nope" }, { access_token: "at" }),
      { status: 400, code: "UNKNOWN_PROVIDER" },
    );
    assert.equal(unknown.details.provider, "nope");
    const empty = await rejectsWith(tw.importConnection(importRef, { access_token: "" }), {
      status: 400,
      code: "INVALID_REQUEST",
    });
    assert.equal(empty.details.field, "access_token");
    const limit = await rejectsWith(tw.listConnectionsPage({ limit: 0 }), {
      status: 400,
      code: "INVALID_REQUEST",
    });
    assert.equal(limit.details.field, "limit");
  });

  it("percent-encodes path segments and query values", async () => {
    const ref = { user_id: "user ?#%&+é 名", provider: "fake", account_id: "a:b@c;d=e%2F" };
    const { created } = await tw.importConnection(ref, { access_token: "at-odd", expires_in: 60 });
    assert.equal(created, true);
    const view = await tw.getConnection(ref);
    assert.equal(view.user_id, ref.user_id);
    assert.equal(view.account_id, ref.account_id);
    const listed = await tw.listConnections({ user_id: ref.user_id }).toArray();
    assert.deepEqual(listed.map((c) => c.account_id), [ref.account_id]);

    // A `/` in an id is the server's 400, naming the field.
    const slash = await rejectsWith(tw.getConnection({ ...ref, user_id: "a/b" }), {
      status: 400,
      code: "INVALID_REQUEST",
    });
    assert.match(slash.message, /user_id/);
    // Dot segments would change the route: refused before any request.
    const counting = countingFetch();
    const client = new Tokenwarden({ baseUrl: server.baseUrl, apiKey: API_KEY, fetch: counting });
    for (const [field, value] of [["user_id", ".."], ["account_id", "."], ["provider", ""]]) {
      await assert.rejects(
        client.getConnection({ ...ref, [field]: value }),
        (error) => error instanceof TypeError && error.message.startsWith(`${field}:`),
      );
    }
    assert.equal(counting.requests.length, 0);
  });

  it("providers() lists each provider with its grant and breaker; application tokens", async () => {
    const providers = await tw.providers();
    assert.deepEqual(
      providers.map((p) => [p.name, p.grant]),
      [
        ["billing", "client_credentials"],
        ["fake", "authorization_code"],
        ["flaky", "authorization_code"],
      ],
    );
    assert.equal(providers.find((p) => p.name === "fake").breaker.state, "closed");

    const grants = () => provider.count((c) => c.grant_type === "client_credentials");
    const app = await tw.getAppAccessToken("billing");
    assert.match(app.accessToken, /^app-token-\d+$/);
    assert.ok(app.expiresAt instanceof Date);
    const again = await tw.getAppAccessToken("billing");
    assert.equal(again.accessToken, app.accessToken);
    assert.equal(grants(), 1, "the application token is obtained once, then served");
    await rejectsWith(tw.getAppAccessToken("fake"), { status: 400, code: "INVALID_REQUEST" });
  });

  it("creates a connect session, follows it through, and reads it back", async () => {
    const created = await tw.createConnectSession({
      user_id: "u-connect",
      provider: "fake",
      return_url: `${RETURN_URL}?tab=fake`,
      account_id: "acct-c",
    });
    assert.match(created.id, /^cs_/);
    assert.equal(created.reconnect, false);
    assert.ok(Date.parse(created.expires_at) > Date.now());
    const pending = await tw.getConnectSession(created.id);
    assert.equal(pending.status, "pending");
    assert.equal(pending.user_id, "u-connect");
    assert.equal(pending.account_id, "acct-c");

    // The user's browser: the link redirects to the provider with a state and sets the
    // flow cookie; the provider sends the browser back with a code.
    const link = new URL(created.connect_url);
    const opened = await fetch(`${server.baseUrl}${link.pathname}`, { redirect: "manual" });
    assert.equal(opened.status, 302);
    const authorize = new URL(opened.headers.get("location"));
    assert.equal(authorize.origin + authorize.pathname, `${provider.url}/authorize`);
    const state = authorize.searchParams.get("state");
    const cookie = opened.headers.getSetCookie().map((c) => c.split(";")[0]).join("; ");
    const back = await fetch(
      `${server.baseUrl}/connect/callback?code=code-1&state=${encodeURIComponent(state)}`,
      { redirect: "manual", headers: { cookie } },
    );
    assert.equal(back.status, 302);
    const returned = new URL(back.headers.get("location"));
    assert.equal(returned.searchParams.get("status"), "completed");
    assert.equal(returned.searchParams.get("session_id"), created.id);

    const completed = await tw.getConnectSession(created.id);
    assert.equal(completed.status, "completed");
    assert.equal(completed.connection.account_id, "acct-c");
    const token = await tw.getAccessToken({ user_id: "u-connect", provider: "fake", account_id: "acct-c" });
    assert.match(token.accessToken, /^at-connected-\d+$/);

    const reconnect = await tw.createConnectSession({
      user_id: "u-connect",
      provider: "fake",
      return_url: RETURN_URL,
      account_id: "acct-c",
    });
    assert.equal(reconnect.reconnect, true);

    const badReturn = await rejectsWith(
      tw.createConnectSession({
        user_id: "u-connect",
        provider: "fake",
        return_url: "https://elsewhere.example/done",
        account_id: "acct-c",
      }),
      { status: 400, code: "INVALID_REQUEST" },
    );
    assert.equal(badReturn.details.field, "return_url");
    await rejectsWith(tw.getConnectSession("cs_unknown"), {
      status: 404,
      code: "CONNECT_SESSION_NOT_FOUND",
    });
  });

  it("proxy: the API's answers as they are, tokenwarden's own refusals as errors", async () => {
    const ref = { user_id: "u-proxy", provider: "fake", account_id: "acct-p" };
    await tw.importConnection(ref, { access_token: "at-proxy-1", expires_in: 3600 });
    const echoed = await tw.proxy(ref, "/echo/a%2Fb?x=1", {
      method: "POST",
      headers: { "content-type": "text/plain", "x-app": "1" },
      body: "hello",
    });
    assert.equal(echoed.status, 200);
    assert.deepEqual(await echoed.json(), {
      method: "POST",
      url: "/api/echo/a%2Fb?x=1",
      authorization: "Bearer at-proxy-1",
      body: "hello",
    });
    // An API error, even one shaped like tokenwarden's, is the API's answer: not thrown.
    const teapot = await tw.proxy(ref, "teapot");
    assert.equal(teapot.status, 418);
    assert.equal((await teapot.json()).error.code, "TEAPOT");
    // Dot segments are refused before anything is sent (fetch would resolve them away) …
    for (const escape of ["a/../../token", "%2e%2E/x", "./x"]) {
      await assert.rejects(tw.proxy(ref, escape), TypeError);
    }
    // … and every other escape by tokenwarden, as its own answer.
    const refused = await rejectsWith(tw.proxy(ref, "%252e%252e/token"), {
      status: 400,
      code: "INVALID_REQUEST",
    });
    assert.equal(refused.details.field, "path");
    await rejectsWith(tw.proxy({ ...ref, account_id: "missing" }, "echo"), {
      status: 404,
      code: "ACCOUNT_NOT_FOUND",
    });
  });

  it("deletes a connection", async () => {
    const ref = { user_id: "u-delete", provider: "fake", account_id: "acct-d" };
    await tw.importConnection(ref, { access_token: "at-d", expires_in: 60 });
    assert.equal(await tw.deleteConnection(ref), undefined);
    await rejectsWith(tw.getConnection(ref), { status: 404, code: "ACCOUNT_NOT_FOUND" });
  });

  it("no answer: a TokenwardenNetworkError, without the key", async () => {
    const client = new Tokenwarden({ baseUrl: await closedPort(), apiKey: API_KEY });
    const error = await rejectsWith(client.getConnection(importRef), {
      status: 0,
      code: "NETWORK_ERROR",
    });
    assert.ok(error instanceof TokenwardenNetworkError);
    assert.match(error.message, /ECONNREFUSED/);
    assert.ok(!inspect(error).includes(API_KEY));
  });

  it("never let a token or the key reach the server's log", () => {
    const log = server.output();
    assert.ok(log.includes('"listening"'), "the log was read");
    for (const secret of [API_KEY, "at-import-1", "rt-import-1", "rt-refresh", "at-connected-"]) {
      assert.ok(!log.includes(secret), `${secret} in the server's log`);
    }
  });
});
