// What the client does with answers no healthy tokenwarden gives, its argument checks, and
// verifyWebhook against signatures made here with node:crypto (an implementation of its own).
import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { describe, it } from "node:test";

import { Tokenwarden, TokenwardenError, verifyWebhook } from "../dist/index.js";

const KEY = "unit-test-key-0123456789";

/** A client whose fetch answers `respond(url, init)` and records the requests. */
function clientAnswering(respond) {
  const requests = [];
  const client = new Tokenwarden({
    baseUrl: "http://tokenwarden.test:8420/base/",
    apiKey: KEY,
    fetch: async (url, init) => {
      requests.push({ url: String(url), init });
      return respond(url, init);
    },
  });
  return { client, requests };
}

const errorBody = (fields) =>
  JSON.stringify({
    error: { message: "m", reconnect: false, retry_after_s: null, details: {}, ...fields },
  });

describe("the client on its own", () => {
  it("refuses a key with a line break or space, and never quotes a key fetch complains about", async () => {
    for (const apiKey of ["k\ny", "key\r", "a b", "nul\u0000"]) {
      assert.throws(
        () => new Tokenwarden({ baseUrl: "http://tokenwarden.test", apiKey }),
        (error) => {
          assert.ok(error instanceof TypeError);
          assert.match(error.message, /^apiKey: /);
          assert.ok(!error.message.includes(apiKey), error.message);
          return true;
        },
      );
    }
    // A fetch that fails quoting the header, as Node's does for a bad header value.
    const client = new Tokenwarden({
      baseUrl: "http://tokenwarden.test",
      apiKey: KEY,
      fetch: async (_url, init) => {
        throw new TypeError(`Headers.append: "${init.headers.authorization}" is an invalid header value.`);
      },
    });
    await assert.rejects(client.providers(), (error) => {
      assert.equal(error.code, "NETWORK_ERROR");
      assert.ok(!error.message.includes(KEY), error.message);
      assert.ok(!String(error.stack).includes(KEY));
      assert.equal(error.cause, undefined, "the quoting error is not attached");
      return true;
    });
  });

  it("sends the key as a bearer token, JSON bodies, and encoded queries under the base path", async () => {
    const { client, requests } = clientAnswering(
      () => new Response(JSON.stringify({ items: [], next_cursor: null }), { status: 200 }),
    );
    await client.listConnectionsPage({ user_id: "a b&c", status: "active", limit: 5 });
    await client.refresh({ user_id: "u", provider: "p", account_id: "a" }, { max_retries: 2 });
    await client.refresh({ user_id: "u", provider: "p", account_id: "a" });
    assert.equal(
      requests[0].url,
      "http://tokenwarden.test:8420/base/v1/connections?user_id=a+b%26c&status=active&limit=5",
    );
    assert.equal(requests[0].init.headers.authorization, `Bearer ${KEY}`);
    assert.equal(requests[1].init.method, "POST");
    assert.equal(requests[1].init.body, '{"max_retries":2}');
    assert.equal(requests[1].init.headers["content-type"], "application/json");
    assert.equal(requests[2].init.body, undefined, "no options, no body");
  });

  it("takes retryAfter from the Retry-After header when the body has none", async () => {
    for (const [header, expected] of [
      ["7", 7],
      [new Date(Date.now() + 30_000).toUTCString(), 30],
      ["soon", null],
    ]) {
      const { client } = clientAnswering(
        () =>
          new Response(errorBody({ code: "TOKEN_REFRESH_ERROR" }), {
            status: 503,
            headers: { "retry-after": header },
          }),
      );
      await assert.rejects(client.providers(), (error) => {
        assert.ok(error instanceof TokenwardenError);
        assert.equal(error.code, "TOKEN_REFRESH_ERROR");
        // An HTTP date is rounded up to whole seconds from now.
        if (expected === 30) assert.ok(error.retryAfter === 30 || error.retryAfter === 29);
        else assert.equal(error.retryAfter, expected, header);
        return true;
      });
    }
    const { client } = clientAnswering(
      () =>
        new Response(errorBody({ code: "REFRESH_TOO_EARLY", retry_after_s: 120 }), {
          status: 409,
          headers: { "retry-after": "5" },
        }),
    );
    await assert.rejects(client.providers(), (error) => error.retryAfter === 120);
  });

  it("an answer that is not tokenwarden's is INVALID_RESPONSE, with its status", async () => {
    for (const [status, body] of [
      [502, "<html>Bad Gateway</html>"],
      [500, JSON.stringify({ message: "not ours" })],
      [200, "not json"],
    ]) {
      const { client } = clientAnswering(() => new Response(body, { status }));
      await assert.rejects(client.providers(), (error) => {
        assert.ok(error instanceof TokenwardenError);
        assert.equal(error.code, "INVALID_RESPONSE");
        assert.equal(error.status, status);
        assert.ok(!error.message.includes(KEY));
        return true;
      });
    }
  });

  it("refuses a bad baseUrl or apiKey, naming it and never echoing the key", () => {
    for (const [options, field] of [
      [{ baseUrl: "127.0.0.1:8420", apiKey: KEY }, "baseUrl"],
      [{ baseUrl: "ftp://example.com", apiKey: KEY }, "baseUrl"],
      [{ baseUrl: `http://user:${KEY}@example.com`, apiKey: KEY }, "baseUrl"],
      [{ baseUrl: "http://example.com/?x=1", apiKey: KEY }, "baseUrl"],
      [{ baseUrl: 8420, apiKey: KEY }, "baseUrl"],
      [{ baseUrl: "http://example.com", apiKey: "" }, "apiKey"],
      [{ baseUrl: "http://example.com" }, "apiKey"],
    ]) {
      assert.throws(
        () => new Tokenwarden(options),
        (error) =>
          error instanceof TypeError &&
          error.message.startsWith(`${field}:`) &&
          !error.message.includes(KEY),
      );
    }
    assert.equal(new Tokenwarden({ baseUrl: "http://h:1/x/", apiKey: KEY }).baseUrl, "http://h:1/x");
  });

  it("an abort by the caller is thrown as it is", async () => {
    const controller = new AbortController();
    const { client } = clientAnswering((_, init) => {
      controller.abort();
      throw init.signal.reason;
    });
    await assert.rejects(client.providers({ signal: controller.signal }), (error) => {
      assert.ok(!(error instanceof TokenwardenError));
      assert.equal(error.name, "AbortError");
      return true;
    });
  });
});

describe("verifyWebhook against node:crypto signatures", () => {
  const key = randomBytes(24);
  const sign = (id, timestamp, body, k = key) =>
    `v1,${createHmac("sha256", k).update(`${id}.${timestamp}.${body}`).digest("base64")}`;
  const message = (body = '{"id":"evt_1","type":"webhook.test","data":{"endpoint":"x"}}') => {
    const timestamp = String(Math.floor(Date.now() / 1000));
    return {
      headers: {
        "webhook-id": "evt_1",
        "webhook-timestamp": timestamp,
        "webhook-signature": sign("evt_1", timestamp, body),
      },
      body,
    };
  };

  it("accepts a secret with or without padding or prefix", async () => {
    const { headers, body } = message();
    const base64 = key.toString("base64");
    for (const secret of [`whsec_${base64}`, base64]) {
      const event = await verifyWebhook(secret, headers, body);
      assert.equal(event.type, "webhook.test");
    }
    // 25 bytes end in padding, which a secret may leave out.
    const odd = randomBytes(25);
    const unpadded = `whsec_${odd.toString("base64").replace(/=+$/, "")}`;
    const timestamp = headers["webhook-timestamp"];
    const signed = { ...headers, "webhook-signature": sign("evt_1", timestamp, body, odd) };
    assert.equal((await verifyWebhook(unpadded, signed, body)).id, "evt_1");
  });

  it("signs the bytes as received: a unicode body, and a body that is not an event", async () => {
    const unicode = message('{"id":"evt_1","type":"webhook.test","data":{"endpoint":"é 名 🚀"}}');
    const event = await verifyWebhook(`whsec_${key.toString("base64")}`, unicode.headers, Buffer.from(unicode.body));
    assert.equal(event.data.endpoint, "é 名 🚀");
    const notJson = message("plain text");
    await assert.rejects(
      verifyWebhook(`whsec_${key.toString("base64")}`, notJson.headers, notJson.body),
      (error) => error.reason === "invalid_body",
    );
  });
});
