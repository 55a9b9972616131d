// Standard Webhooks verification (https://www.standardwebhooks.com/) of tokenwarden's
// deliveries, with WebCrypto alone, so it runs in Node 20+, browsers, Deno and edge runtimes.
//
// A message is signed as `v1,` + base64(HMAC-SHA256(key, `{webhook-id}.{webhook-timestamp}.{body}`)),
// the key being the base64 after `whsec_`; `webhook-signature` holds one or more such
// signatures, space-separated (one per secret while the server rotates secrets).

import type { ConnectionStatus } from "./types.js";

/** How far `webhook-timestamp` may be from now, by default: five minutes either way. */
export const DEFAULT_TOLERANCE_SECONDS = 300;

/** Why a message was refused. */
export type WebhookVerificationReason =
  | "invalid_secret"
  | "missing_header"
  | "invalid_timestamp"
  | "timestamp_too_old"
  | "timestamp_too_new"
  | "invalid_signature"
  | "invalid_body";

/** A message that is not a genuine, fresh tokenwarden delivery. Answer it with a 400. */
export class WebhookVerificationError extends Error {
  readonly reason: WebhookVerificationReason;

  constructor(reason: WebhookVerificationReason, message: string) {
    super(message);
    this.name = "WebhookVerificationError";
    this.reason = reason;
  }
}

/** The request's headers: a `Headers` object, or a plain object such as Node's `req.headers`. */
export type WebhookHeaders =
  | Headers
  | Record<string, string | readonly string[] | undefined | null>;

/** The request's body exactly as received: parse it only after verification. */
export type WebhookBody = string | Uint8Array | ArrayBuffer;

export interface VerifyWebhookOptions {
  /** Seconds `webhook-timestamp` may be from now (default 300). */
  toleranceSeconds?: number;
  /** What "now" is (default: the clock): a `Date` or milliseconds since the epoch. */
  now?: Date | number;
}

interface EventOf<T extends string, D> {
  /** `evt_…`: also the `webhook-id` header, the same on every retry; deduplicate on it. */
  id: string;
  type: T;
  /** RFC 3339: when the change happened. */
  timestamp: string;
  data: D;
}

/** A connection event's data. Never a token. */
export interface ConnectionEventData {
  user_id: string;
  provider: string;
  account_id: string;
  status: ConnectionStatus;
  /** The connection's version after the change: it only grows, so events can be ordered. */
  version: number;
  /**
   * The last refresh error, while the connection fails or needs a reconnect;
   * `provider_error` is the provider's OAuth `error` (`invalid_grant`, …) or null.
   */
  error?: { code: string; message: string; provider_error: string | null };
}

/** Events about one connection. */
export type ConnectionEvent = EventOf<
  | "connection.created"
  | "connection.reconnected"
  | "connection.refresh_failing"
  | "connection.needs_reconnect"
  | "connection.recovered"
  | "connection.deleted",
  ConnectionEventData
>;

/** A provider's circuit breaker opened or closed (as seen by one server instance). */
export type ProviderEvent = EventOf<
  "provider.circuit_opened" | "provider.circuit_closed",
  { provider: string; state: "open" | "closed" }
>;

/** A connect session failed or expired. */
export type ConnectSessionFailedEvent = EventOf<
  "connect_session.failed",
  {
    session_id: string;
    user_id: string;
    provider: string;
    /** The account the application named, if it did. */
    account_id?: string;
    error: { code: string; message: string };
  }
>;

/** Sent by `POST /v1/webhooks/endpoints/{name}/test` to that endpoint only. */
export type WebhookTestEvent = EventOf<"webhook.test", { endpoint: string }>;

/** Every event tokenwarden sends; narrow it on `type`. */
export type WebhookEvent =
  | ConnectionEvent
  | ProviderEvent
  | ConnectSessionFailedEvent
  | WebhookTestEvent;

const encoder = new TextEncoder();

/**
 * Checks that a webhook request comes from tokenwarden and is fresh, and answers its event.
 *
 * `secret` is the endpoint's `whsec_…` secret, or several (any one may match: during a
 * rotation, list the new and the old). Throws a {@link WebhookVerificationError} when the
 * headers are missing, the timestamp is more than `toleranceSeconds` from now, no signature
 * matches, or the body is not an event. Pass the body exactly as received: re-serialized
 * JSON does not verify.
 */
export async function verifyWebhook(
  secret: string | readonly string[],
  headers: WebhookHeaders,
  rawBody: WebhookBody,
  options: VerifyWebhookOptions = {},
): Promise<WebhookEvent> {
  const keys = await Promise.all(secretList(secret).map(importSecret));
  const id = header(headers, "webhook-id");
  const timestamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");

  if (!/^\d{1,15}$/.test(timestamp)) {
    throw new WebhookVerificationError(
      "invalid_timestamp",
      "webhook-timestamp: must be unix seconds",
    );
  }
  const tolerance = options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS;
  if (!(Number.isFinite(tolerance) && tolerance >= 0)) {
    throw new TypeError("toleranceSeconds: must be a number of seconds ≥ 0");
  }
  const now = options.now === undefined ? Date.now() : Number(options.now);
  const age = Math.floor(now / 1000) - Number(timestamp);
  if (age > tolerance) {
    throw new WebhookVerificationError(
      "timestamp_too_old",
      `webhook-timestamp: ${age} s old, more than ${tolerance} s (a replay, or a clock off)`,
    );
  }
  if (-age > tolerance) {
    throw new WebhookVerificationError(
      "timestamp_too_new",
      `webhook-timestamp: ${-age} s in the future, more than ${tolerance} s (a clock off)`,
    );
  }

  const body = bodyBytes(rawBody);
  const content = concat(encoder.encode(`${id}.${timestamp}.`), body);
  const candidates = signatures
    .split(" ")
    .filter((entry) => entry.startsWith("v1,"))
    .map((entry) => decodeBase64(entry.slice(3)))
    .filter((bytes): bytes is Uint8Array<ArrayBuffer> => bytes !== null);
  let matched = false;
  for (const key of keys) {
    const expected = new Uint8Array(await crypto.subtle.sign("HMAC", key, content));
    for (const candidate of candidates) {
      // Every candidate is compared in full, whatever matched before.
      matched = timingSafeEqual(expected, candidate) || matched;
    }
  }
  if (!matched) {
    throw new WebhookVerificationError(
      "invalid_signature",
      "webhook-signature: no v1 signature matches the secret(s)",
    );
  }

  let event: unknown;
  try {
    event = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    throw new WebhookVerificationError("invalid_body", "body: is not JSON");
  }
  if (
    !event ||
    typeof event !== "object" ||
    typeof (event as { type?: unknown }).type !== "string" ||
    typeof (event as { id?: unknown }).id !== "string"
  ) {
    throw new WebhookVerificationError("invalid_body", "body: is not a tokenwarden event");
  }
  return event as WebhookEvent;
}

function secretList(secret: string | readonly string[]): string[] {
  const list = typeof secret === "string" ? [secret] : Array.isArray(secret) ? [...secret] : null;
  if (!list || list.length === 0 || list.some((s) => typeof s !== "string")) {
    throw new WebhookVerificationError(
      "invalid_secret",
      "secret: must be a whsec_… string or a non-empty list of them",
    );
  }
  return list;
}

async function importSecret(secret: string, index: number): Promise<CryptoKey> {
  const encoded = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret;
  const bytes = decodeBase64(encoded);
  if (!bytes || bytes.length === 0) {
    // The secret itself is never part of the message.
    throw new WebhookVerificationError(
      "invalid_secret",
      `secret${index > 0 ? `[${index}]` : ""}: must be whsec_ followed by base64`,
    );
  }
  return crypto.subtle.importKey("raw", bytes, { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
}

function header(headers: WebhookHeaders, name: string): string {
  let value: string | readonly string[] | null | undefined;
  if (typeof Headers !== "undefined" && headers instanceof Headers) {
    value = headers.get(name);
  } else if (headers && typeof headers === "object") {
    const plain = headers as Record<string, string | readonly string[] | undefined | null>;
    const key = Object.keys(plain).find((k) => k.toLowerCase() === name);
    value = key === undefined ? undefined : plain[key];
  } else {
    throw new TypeError("headers: must be a Headers object or a plain object");
  }
  // A repeated header (Node gives an array): its values, as one comma-less list.
  const text = typeof value === "string" ? value : Array.isArray(value) ? value.join(" ") : "";
  if (text.trim() === "") {
    throw new WebhookVerificationError("missing_header", `${name}: header is missing`);
  }
  return text.trim();
}

function bodyBytes(body: WebhookBody): Uint8Array {
  if (typeof body === "string") return encoder.encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  throw new TypeError("rawBody: must be a string, Uint8Array or ArrayBuffer");
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/** Standard base64 (padding optional), or `null` when `text` is not base64. */
function decodeBase64(text: string): Uint8Array<ArrayBuffer> | null {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return null;
  let binary: string;
  try {
    binary = atob(text);
  } catch {
    return null;
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Equal bytes, in time that depends only on the lengths (which are not secret). */
export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let difference = 0;
  for (let i = 0; i < a.length; i++) difference |= (a[i] ?? 0) ^ (b[i] ?? 0);
  return difference === 0;
}
