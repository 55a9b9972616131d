// What the client adds to a token request: `getAccessToken` against a bare `fetch` of the
// same route, both sequential over loopback to one `tokenwarden serve` (started here, as the
// tests start it), alternating rounds so both see the same machine.
//
//   TOKENWARDEN_BIN=…/tokenwarden node bench/access-token.mjs [requests per round] [rounds]
import { performance } from "node:perf_hooks";

import { Tokenwarden } from "../dist/index.js";
import { API_KEY, startTokenwarden } from "../test/harness.mjs";

const perRound = Number(process.argv[2] ?? 2000);
const rounds = Number(process.argv[3] ?? 5);

const server = await startTokenwarden(`
[providers.fake]
kind = "oauth2"
client_id = "client-id-1"
client_secret = "client-secret-1"
token_url = "http://127.0.0.1:9/token"
`);
try {
  const ref = { user_id: "u-bench", provider: "fake", account_id: "acct-b" };
  const tw = new Tokenwarden({ baseUrl: server.baseUrl, apiKey: API_KEY });
  await tw.importConnection(ref, { access_token: "at-bench", expires_in: 86_400 });
  const url = `${server.baseUrl}/v1/users/u-bench/connections/fake/acct-b/access-token`;
  const bare = async () => {
    const response = await fetch(url, { headers: { authorization: `Bearer ${API_KEY}` } });
    const body = await response.json();
    if (body.access_token !== "at-bench") throw new Error("unexpected answer");
  };
  const client = async () => {
    const token = await tw.getAccessToken(ref);
    if (token.accessToken !== "at-bench") throw new Error("unexpected answer");
  };

  const measure = async (call) => {
    const times = [];
    for (let i = 0; i < perRound; i++) {
      const start = performance.now();
      await call();
      times.push(performance.now() - start);
    }
    return times;
  };
  for (const call of [bare, client]) await measure(call); // warm-up
  const all = { bare: [], client: [] };
  for (let round = 0; round < rounds; round++) {
    all.bare.push(...(await measure(bare)));
    all.client.push(...(await measure(client)));
  }
  const quantile = (times, q) => {
    const sorted = [...times].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  };
  for (const [name, times] of Object.entries(all)) {
    const mean = times.reduce((a, b) => a + b, 0) / times.length;
    console.log(
      `${name.padEnd(6)} n=${times.length} mean=${(mean * 1000).toFixed(0)} µs ` +
        `p50=${(quantile(times, 0.5) * 1000).toFixed(0)} µs p99=${(quantile(times, 0.99) * 1000).toFixed(0)} µs`,
    );
  }
} finally {
  await server.stop();
}
