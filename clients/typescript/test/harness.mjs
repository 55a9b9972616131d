// Test support: a real `tokenwarden serve` (the binary cargo built) started per test file on
// 127.0.0.1:0 with a configuration written to a temporary directory, a fake OAuth provider
// (a node http server acting as token endpoint) and a webhook receiver.
//
// The binary is TOKENWARDEN_BIN (scripts/test sets it after building), else
// $CARGO_TARGET_DIR/debug/tokenwarden, else the repository's target/debug/tokenwarden. No
// binary is a failure, never a skip.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { EventEmitter, once } from "node:events";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The API key every test server accepts. */
export const API_KEY = `tw-client-test-${randomBytes(16).toString("hex")}`;

const repoRoot = fileURLToPath(new URL("../../..", import.meta.url));

export function binaryPath() {
  if (process.env.TOKENWARDEN_BIN) {
    if (!existsSync(process.env.TOKENWARDEN_BIN)) {
      throw new Error(`TOKENWARDEN_BIN=${process.env.TOKENWARDEN_BIN} does not exist`);
    }
    return process.env.TOKENWARDEN_BIN;
  }
  const candidates = [
    process.env.CARGO_TARGET_DIR && join(process.env.CARGO_TARGET_DIR, "debug", "tokenwarden"),
    join(repoRoot, "target", "debug", "tokenwarden"),
  ].filter(Boolean);
  const found = candidates.find((path) => existsSync(path));
  if (!found) {
    throw new Error(
      `no tokenwarden binary at ${candidates.join(" or ")}: run ` +
        "`cargo build -p tokenwarden-server` and set TOKENWARDEN_BIN (scripts/test does both)",
    );
  }
  return found;
}

async function listen(server) {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return `http://127.0.0.1:${server.address().port}`;
}

async function readBody(request) {
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  return Buffer.concat(chunks);
}

function json(response, status, body) {
  response.writeHead(status, { "content-type": "application/json" });
  response.end(JSON.stringify(body));
}

/**
 * A fake OAuth 2.0 provider. `POST /token`:
 * - `grant_type=refresh_token`: a refresh token starting `rt-revoked` gets `invalid_grant`;
 *   any other gets a new access token `at-refreshed-N` (valid 1 h), the refresh token kept;
 * - `grant_type=client_credentials`: `app-token-N`;
 * - `grant_type=authorization_code`: `at-connected-N` with refresh token `rt-connected`.
 * `POST /down/token` always answers 503 (a provider that is down).
 * Its API, under `/api/` (for the proxy): `/api/teapot` answers 418 with a body shaped like
 * tokenwarden's errors; any other path echoes `{ method, url, authorization, body }`.
 * `calls` records every request: `{ path, grant_type, refresh_token }`.
 */
export async function startFakeProvider() {
  const calls = [];
  let issued = 0;
  const server = createServer(async (request, response) => {
    if (request.url.startsWith("/api/")) {
      const body = (await readBody(request)).toString("utf8");
      if (request.url === "/api/teapot") {
        return json(response, 418, { error: { code: "TEAPOT", message: "the API's own" } });
      }
      return json(response, 200, {
        method: request.method,
        url: request.url,
        authorization: request.headers.authorization ?? null,
        body,
      });
    }
    const form = new URLSearchParams((await readBody(request)).toString("utf8"));
    const call = {
      path: request.url,
      grant_type: form.get("grant_type"),
      refresh_token: form.get("refresh_token"),
    };
    calls.push(call);
    if (request.method !== "POST") return json(response, 405, { error: "invalid_request" });
    if (request.url === "/down/token") {
      return json(response, 503, { error: "temporarily_unavailable" });
    }
    if (request.url !== "/token") return json(response, 404, { error: "invalid_request" });
    issued += 1;
    switch (call.grant_type) {
      case "refresh_token":
        if (call.refresh_token?.startsWith("rt-revoked")) {
          return json(response, 400, { error: "invalid_grant", error_description: "revoked" });
        }
        return json(response, 200, {
          access_token: `at-refreshed-${issued}`,
          token_type: "Bearer",
          expires_in: 3600,
        });
      case "client_credentials":
        return json(response, 200, {
          access_token: `app-token-${issued}`,
          token_type: "Bearer",
          expires_in: 3600,
        });
      case "authorization_code":
        return json(response, 200, {
          access_token: `at-connected-${issued}`,
          refresh_token: "rt-connected",
          token_type: "Bearer",
          expires_in: 3600,
        });
      default:
        return json(response, 400, { error: "unsupported_grant_type" });
    }
  });
  const url = await listen(server);
  return {
    url,
    calls,
    /** How many calls so far matched `predicate`. */
    count: (predicate) => calls.filter(predicate).length,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/**
 * A webhook receiver: records each request's headers (as node gives them) and raw body, and
 * answers 200. `waitFor(predicate)` resolves with the first request (received before or
 * after the call) that matches.
 */
export async function startReceiver() {
  const received = [];
  const events = new EventEmitter();
  const server = createServer(async (request, response) => {
    const entry = { url: request.url, headers: request.headers, body: await readBody(request) };
    received.push(entry);
    response.writeHead(200).end();
    events.emit("request", entry);
  });
  const url = await listen(server);
  return {
    url,
    received,
    waitFor(predicate, timeoutMs = 10_000) {
      const found = received.find(predicate);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          events.off("request", check);
          reject(new Error(`no matching webhook within ${timeoutMs} ms (${received.length} received)`));
        }, timeoutMs);
        function check(entry) {
          if (!predicate(entry)) return;
          clearTimeout(timer);
          events.off("request", check);
          resolve(entry);
        }
        events.on("request", check);
      });
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** The JSON body of a received webhook request. */
export function bodyOf(entry) {
  return JSON.parse(entry.body.toString("utf8"));
}

/**
 * Starts `tokenwarden serve` with a configuration of one test's own: `sections` is TOML
 * appended after the common part (providers, webhook endpoints, `[connect]`). Resolves once
 * the server logs its address.
 */
export async function startTokenwarden(sections) {
  const dir = mkdtempSync(join(tmpdir(), "tw-client-"));
  const config = join(dir, "tokenwarden.toml");
  writeFileSync(
    config,
    `listen = "127.0.0.1:0"
database_url = "sqlite://${join(dir, "tw.db")}"

[encryption]
active_key = "k1"
keys = { k1 = "${randomBytes(32).toString("base64")}" }

[auth]
api_keys = ["${API_KEY}"]

[refresh]
max_retries = 1
initial_delay_ms = 1
max_delay_ms = 5

[breaker]
failure_threshold = 2
open_seconds = 60

[scheduler]
enabled = false

${sections}
`,
  );
  // The developer's own configuration must not leak into the test.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith("TOKENWARDEN_")),
  );
  // Everything the server can log, so the no-secret checks see the levels most likely to leak.
  env.RUST_LOG = "trace";
  const child = spawn(binaryPath(), ["serve", "--config", config], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output = [];
  const lines = new EventEmitter();
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on("line", (line) => {
      output.push(line);
      lines.emit("line", line);
    });
  }
  const exited = once(child, "exit");
  const baseUrl = await new Promise((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => fail("no \"listening\" line within 30 s"), 30_000);
    function fail(why) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      lines.off("line", onLine);
      child.kill("SIGKILL");
      reject(new Error(`tokenwarden serve: ${why}; output:\n${output.join("\n")}`));
    }
    function onLine(line) {
      if (!line.includes('"listening"')) return;
      const addr = /"addr":"([^"]+)"/.exec(line)?.[1];
      if (!addr) return;
      settled = true;
      clearTimeout(timer);
      lines.off("line", onLine);
      resolve(`http://${addr}`);
    }
    lines.on("line", onLine);
    exited.then(([code, signal]) => fail(`exited (${code ?? signal}) before listening`));
  });
  return {
    baseUrl,
    dir,
    /** Every line the server wrote so far (JSON logs). */
    output: () => output.join("\n"),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Retries `check` (a function that throws until it holds) until it passes or time is up. */
export async function eventually(check, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (error) {
      if (Date.now() > deadline) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** A port nothing listens on (bound, then closed). */
export async function closedPort() {
  const server = createServer();
  const url = await listen(server);
  await new Promise((resolve) => server.close(resolve));
  return url;
}
