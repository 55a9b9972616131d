// verifyWebhook on real deliveries of `tokenwarden serve`, and the webhook routes' methods.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";

import {
  Tokenwarden,
  TokenwardenError,
  WebhookVerificationError,
  verifyWebhook,
} from "../dist/index.js";
import {
  API_KEY,
  bodyOf,
  eventually,
  startReceiver,
  startTokenwarden,
} from "./harness.mjs";

const newSecret = () => `whsec_${randomBytes(32).toString("base64")}`;

/** Asserts that verification fails for `reason`. */
async function refused(promise, reason) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof WebhookVerificationError, String(error));
    assert.equal(error.reason, reason, error.message);
    return true;
  });
}

describe("webhooks from tokenwarden serve", () => {
  const secret = newSecret();
  let receiver;
  let server;
  let tw;
  /** The `connection.created` delivery of `u-hook`, as the receiver got it. */
  let delivery;

  before(async () => {
    receiver = await startReceiver();
    server = await startTokenwarden(`
[providers.fake]
kind = "oauth2"
client_id = "client-id-1"
client_secret = "client-secret-1"
token_url = "http://127.0.0.1:9/token"

[webhooks.endpoints.app]
url = "${receiver.url}/hooks"
secret = "${secret}"
timeout_ms = 2000
`);
    tw = new Tokenwarden({ baseUrl: server.baseUrl, apiKey: API_KEY });
    const arrived = receiver.waitFor(
      (r) => bodyOf(r).type === "connection.created" && bodyOf(r).data.user_id === "u-hook",
    );
    await tw.importConnection(
      { user_id: "u-hook", provider: "fake", account_id: "acct-h" },
      { access_token: "at-hook-secret", expires_in: 3600 },
    );
    delivery = await arrived;
  });

  after(async () => {
    await server?.stop();
    await receiver?.close();
  });

  it("verifies a real delivery and answers its event", async () => {
    const event = await verifyWebhook(secret, delivery.headers, delivery.body);
    assert.equal(event.type, "connection.created");
    assert.equal(event.id, delivery.headers["webhook-id"]);
    assert.deepEqual(
      { ...event.data, version: undefined },
      { user_id: "u-hook", provider: "fake", account_id: "acct-h", status: "active", version: undefined },
    );
    assert.equal(typeof event.data.version, "number");
    assert.ok(!delivery.body.toString().includes("at-hook-secret"), "no token in a webhook");

    // The same message as a fetch handler sees it: a Headers object and a string body.
    const headers = new Headers(
      Object.entries(delivery.headers).map(([name, value]) => [name, String(value)]),
    );
    const again = await verifyWebhook(secret, headers, delivery.body.toString("utf8"));
    assert.deepEqual(again, event);
    // And with the body as an ArrayBuffer, the headers' names in capitals.
    const capitals = Object.fromEntries(
      Object.entries(delivery.headers).map(([name, value]) => [name.toUpperCase(), value]),
    );
    const body = delivery.body.buffer.slice(
      delivery.body.byteOffset,
      delivery.body.byteOffset + delivery.body.length,
    );
    assert.deepEqual(await verifyWebhook(secret, capitals, body), event);
  });

  it("connectionEvents lists the events the connection raised, as they were delivered", async () => {
    const ref = { user_id: "u-hook", provider: "fake", account_id: "acct-h" };
    const events = await tw.connectionEvents(ref, { limit: 10 });
    assert.equal(events.recording, true);
    const created = events.items.find((e) => e.type === "connection.created");
    assert.ok(created, JSON.stringify(events));
    assert.equal(created.id, delivery.headers["webhook-id"]);
    await assert.rejects(tw.connectionEvents(ref, { limit: 0 }), (error) => {
      assert.ok(error instanceof TokenwardenError, String(error));
      assert.equal(error.status, 400);
      return true;
    });
  });

  it("refuses a tampered body or timestamp, a wrong secret, and missing headers", async () => {
    const tampered = Buffer.from(delivery.body.toString().replace('"u-hook"', '"u-evil"'));
    assert.notDeepEqual(tampered, delivery.body);
    await refused(verifyWebhook(secret, delivery.headers, tampered), "invalid_signature");
    const timestamp = Number(delivery.headers["webhook-timestamp"]);
    await refused(
      verifyWebhook(
        secret,
        { ...delivery.headers, "webhook-timestamp": String(timestamp - 1) },
        delivery.body,
      ),
      "invalid_signature",
    );
    await refused(verifyWebhook(newSecret(), delivery.headers, delivery.body), "invalid_signature");
    for (const name of ["webhook-id", "webhook-timestamp", "webhook-signature"]) {
      const headers = { ...delivery.headers };
      delete headers[name];
      await refused(verifyWebhook(secret, headers, delivery.body), "missing_header");
    }
    await refused(verifyWebhook("whsec_!!!", delivery.headers, delivery.body), "invalid_secret");
    await refused(verifyWebhook([], delivery.headers, delivery.body), "invalid_secret");
  });

  it("refuses a timestamp more than five minutes away (a replay), accepts one within", async () => {
    const sent = Number(delivery.headers["webhook-timestamp"]) * 1000;
    const at = (now) => verifyWebhook(secret, delivery.headers, delivery.body, { now });
    await at(sent + 299_000);
    await at(new Date(sent - 299_000));
    await refused(at(sent + 301_000), "timestamp_too_old");
    await refused(at(sent - 301_000), "timestamp_too_new");
    await refused(
      verifyWebhook(secret, delivery.headers, delivery.body, { now: sent + 20_000, toleranceSeconds: 10 }),
      "timestamp_too_old",
    );
    await refused(
      verifyWebhook(
        secret,
        { ...delivery.headers, "webhook-timestamp": "soon" },
        delivery.body,
      ),
      "invalid_timestamp",
    );
  });

  it("accepts any of several secrets, and any of several signatures", async () => {
    const other = newSecret();
    await verifyWebhook([other, secret], delivery.headers, delivery.body);
    await refused(verifyWebhook([other], delivery.headers, delivery.body), "invalid_signature");
    const signature = delivery.headers["webhook-signature"];
    const bogus = `v1,${randomBytes(32).toString("base64")}`;
    await verifyWebhook(
      secret,
      { ...delivery.headers, "webhook-signature": `${bogus} ${signature}` },
      delivery.body,
    );
    // Only v1 signatures count.
    await refused(
      verifyWebhook(
        secret,
        { ...delivery.headers, "webhook-signature": signature.replace(/^v1,/, "v2,") },
        delivery.body,
      ),
      "invalid_signature",
    );
  });

  it("testWebhookEndpoint sends webhook.test, which verifies, with the id it answered", async () => {
    const { event_id } = await tw.testWebhookEndpoint("app");
    assert.match(event_id, /^evt_/);
    const received = await receiver.waitFor((r) => r.headers["webhook-id"] === event_id);
    const event = await verifyWebhook(secret, received.headers, received.body);
    assert.equal(event.type, "webhook.test");
    assert.deepEqual(event.data, { endpoint: "app" });
    await assert.rejects(tw.testWebhookEndpoint("nope"), (error) => {
      assert.ok(error instanceof TokenwardenError);
      assert.equal(error.status, 404);
      assert.equal(error.code, "WEBHOOK_ENDPOINT_NOT_FOUND");
      return true;
    });
  });

  it("lists deliveries by filter and page; retryDelivery names what it refuses", async () => {
    await tw.testWebhookEndpoint("app");
    // A delivery is recorded as delivered just after the receiver answered.
    const delivered = await eventually(async () => {
      const all = await tw.deliveries({ status: "delivered" }).toArray();
      assert.ok(all.length >= 3, `${all.length} delivered`);
      return all;
    });
    const first = await tw.deliveriesPage({ status: "delivered", limit: 1 });
    assert.equal(first.items.length, 1);
    assert.equal(typeof first.next_cursor, "string");
    const paged = await tw.deliveries({ status: "delivered", limit: 1 }).toArray();
    assert.deepEqual(
      paged.map((d) => d.id),
      delivered.map((d) => d.id),
    );
    assert.equal(new Set(paged.map((d) => d.id)).size, paged.length);
    const created = paged.map((d) => Date.parse(d.created_at));
    assert.deepEqual(created, [...created].sort((a, b) => b - a), "newest first");
    for (const d of paged) {
      assert.equal(d.endpoint, "app");
      assert.equal(d.status, "delivered");
      assert.equal(d.attempts, 1);
    }
    const tests = await tw.deliveries({ type: "webhook.test" }).toArray();
    assert.ok(tests.length >= 2 && tests.every((d) => d.type === "webhook.test"));

    await assert.rejects(tw.retryDelivery(paged[0].id), (error) => {
      assert.equal(error.status, 409);
      assert.equal(error.code, "WEBHOOK_DELIVERY_NOT_FAILED");
      return true;
    });
    await assert.rejects(tw.retryDelivery("dlv_0000000000000_00000000"), (error) => {
      assert.equal(error.status, 404);
      assert.equal(error.code, "WEBHOOK_DELIVERY_NOT_FOUND");
      return true;
    });
  });
});
