import type { ConnectionStatus } from "./types.js";
/** How far `webhook-timestamp` may be from now, by default: five minutes either way. */
export declare const DEFAULT_TOLERANCE_SECONDS = 300;
/** Why a message was refused. */
export type WebhookVerificationReason = "invalid_secret" | "missing_header" | "invalid_timestamp" | "timestamp_too_old" | "timestamp_too_new" | "invalid_signature" | "invalid_body";
/** A message that is not a genuine, fresh tokenwarden delivery. Answer it with a 400. */
export declare class WebhookVerificationError extends Error {
    readonly reason: WebhookVerificationReason;
    constructor(reason: WebhookVerificationReason, message: string);
}
/** The request's headers: a `Headers` object, or a plain object such as Node's `req.headers`. */
export type WebhookHeaders = Headers | Record<string, string | readonly string[] | undefined | null>;
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
    error?: {
        code: string;
        message: string;
        provider_error: string | null;
    };
}
/** Events about one connection. */
export type ConnectionEvent = EventOf<"connection.created" | "connection.reconnected" | "connection.refresh_failing" | "connection.needs_reconnect" | "connection.recovered" | "connection.deleted", ConnectionEventData>;
/** A provider's circuit breaker opened or closed (as seen by one server instance). */
export type ProviderEvent = EventOf<"provider.circuit_opened" | "provider.circuit_closed", {
    provider: string;
    state: "open" | "closed";
}>;
/** A connect session failed or expired. */
export type ConnectSessionFailedEvent = EventOf<"connect_session.failed", {
    session_id: string;
    user_id: string;
    provider: string;
    /** The account the application named, if it did. */
    account_id?: string;
    error: {
        code: string;
        message: string;
    };
}>;
/** Sent by `POST /v1/webhooks/endpoints/{name}/test` to that endpoint only. */
export type WebhookTestEvent = EventOf<"webhook.test", {
    endpoint: string;
}>;
/** Every event tokenwarden sends; narrow it on `type`. */
export type WebhookEvent = ConnectionEvent | ProviderEvent | ConnectSessionFailedEvent | WebhookTestEvent;
/**
 * Checks that a webhook request comes from tokenwarden and is fresh, and answers its event.
 *
 * `secret` is the endpoint's `whsec_…` secret, or several (any one may match: during a
 * rotation, list the new and the old). Throws a {@link WebhookVerificationError} when the
 * headers are missing, the timestamp is more than `toleranceSeconds` from now, no signature
 * matches, or the body is not an event. Pass the body exactly as received: re-serialized
 * JSON does not verify.
 */
export declare function verifyWebhook(secret: string | readonly string[], headers: WebhookHeaders, rawBody: WebhookBody, options?: VerifyWebhookOptions): Promise<WebhookEvent>;
/** Equal bytes, in time that depends only on the lengths (which are not secret). */
export declare function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean;
export {};
