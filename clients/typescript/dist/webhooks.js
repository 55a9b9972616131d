// Standard Webhooks verification (https://www.standardwebhooks.com/) of tokenwarden's
// deliveries, with WebCrypto alone, so it runs in Node 20+, browsers, Deno and edge runtimes.
//
// A message is signed as `v1,` + base64(HMAC-SHA256(key, `{webhook-id}.{webhook-timestamp}.{body}`)),
// the key being the base64 after `whsec_`; `webhook-signature` holds one or more such
// signatures, space-separated (one per secret while the server rotates secrets).
/** How far `webhook-timestamp` may be from now, by default: five minutes either way. */
export const DEFAULT_TOLERANCE_SECONDS = 300;
/** A message that is not a genuine, fresh tokenwarden delivery. Answer it with a 400. */
export class WebhookVerificationError extends Error {
    reason;
    constructor(reason, message) {
        super(message);
        this.name = "WebhookVerificationError";
        this.reason = reason;
    }
}
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
export async function verifyWebhook(secret, headers, rawBody, options = {}) {
    const keys = await Promise.all(secretList(secret).map(importSecret));
    const id = header(headers, "webhook-id");
    const timestamp = header(headers, "webhook-timestamp");
    const signatures = header(headers, "webhook-signature");
    if (!/^\d{1,15}$/.test(timestamp)) {
        throw new WebhookVerificationError("invalid_timestamp", "webhook-timestamp: must be unix seconds");
    }
    const tolerance = options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS;
    if (!(Number.isFinite(tolerance) && tolerance >= 0)) {
        throw new TypeError("toleranceSeconds: must be a number of seconds ≥ 0");
    }
    const now = options.now === undefined ? Date.now() : Number(options.now);
    const age = Math.floor(now / 1000) - Number(timestamp);
    if (age > tolerance) {
        throw new WebhookVerificationError("timestamp_too_old", `webhook-timestamp: ${age} s old, more than ${tolerance} s (a replay, or a clock off)`);
    }
    if (-age > tolerance) {
        throw new WebhookVerificationError("timestamp_too_new", `webhook-timestamp: ${-age} s in the future, more than ${tolerance} s (a clock off)`);
    }
    const body = bodyBytes(rawBody);
    const content = concat(encoder.encode(`${id}.${timestamp}.`), body);
    const candidates = signatures
        .split(" ")
        .filter((entry) => entry.startsWith("v1,"))
        .map((entry) => decodeBase64(entry.slice(3)))
        .filter((bytes) => bytes !== null);
    let matched = false;
    for (const key of keys) {
        const expected = new Uint8Array(await crypto.subtle.sign("HMAC", key, content));
        for (const candidate of candidates) {
            // Every candidate is compared in full, whatever matched before.
            matched = timingSafeEqual(expected, candidate) || matched;
        }
    }
    if (!matched) {
        throw new WebhookVerificationError("invalid_signature", "webhook-signature: no v1 signature matches the secret(s)");
    }
    let event;
    try {
        event = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
    }
    catch {
        throw new WebhookVerificationError("invalid_body", "body: is not JSON");
    }
    if (!event ||
        typeof event !== "object" ||
        typeof event.type !== "string" ||
        typeof event.id !== "string") {
        throw new WebhookVerificationError("invalid_body", "body: is not a tokenwarden event");
    }
    return event;
}
function secretList(secret) {
    const list = typeof secret === "string" ? [secret] : Array.isArray(secret) ? [...secret] : null;
    if (!list || list.length === 0 || list.some((s) => typeof s !== "string")) {
        throw new WebhookVerificationError("invalid_secret", "secret: must be a whsec_… string or a non-empty list of them");
    }
    return list;
}
async function importSecret(secret, index) {
    const encoded = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret;
    const bytes = decodeBase64(encoded);
    if (!bytes || bytes.length === 0) {
        // The secret itself is never part of the message.
        throw new WebhookVerificationError("invalid_secret", `secret${index > 0 ? `[${index}]` : ""}: must be whsec_ followed by base64`);
    }
    return crypto.subtle.importKey("raw", bytes, { name: "HMAC", hash: "SHA-256" }, false, [
        "sign",
    ]);
}
function header(headers, name) {
    let value;
    if (typeof Headers !== "undefined" && headers instanceof Headers) {
        value = headers.get(name);
    }
    else if (headers && typeof headers === "object") {
        const plain = headers;
        const key = Object.keys(plain).find((k) => k.toLowerCase() === name);
        value = key === undefined ? undefined : plain[key];
    }
    else {
        throw new TypeError("headers: must be a Headers object or a plain object");
    }
    // A repeated header (Node gives an array): its values, as one comma-less list.
    const text = typeof value === "string" ? value : Array.isArray(value) ? value.join(" ") : "";
    if (text.trim() === "") {
        throw new WebhookVerificationError("missing_header", `${name}: header is missing`);
    }
    return text.trim();
}
function bodyBytes(body) {
    if (typeof body === "string")
        return encoder.encode(body);
    if (body instanceof Uint8Array)
        return body;
    if (body instanceof ArrayBuffer)
        return new Uint8Array(body);
    throw new TypeError("rawBody: must be a string, Uint8Array or ArrayBuffer");
}
function concat(a, b) {
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
}
/** Standard base64 (padding optional), or `null` when `text` is not base64. */
function decodeBase64(text) {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text))
        return null;
    let binary;
    try {
        binary = atob(text);
    }
    catch {
        return null;
    }
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++)
        bytes[i] = binary.charCodeAt(i);
    return bytes;
}
/** Equal bytes, in time that depends only on the lengths (which are not secret). */
export function timingSafeEqual(a, b) {
    if (a.length !== b.length)
        return false;
    let difference = 0;
    for (let i = 0; i < a.length; i++)
        difference |= (a[i] ?? 0) ^ (b[i] ?? 0);
    return difference === 0;
}
