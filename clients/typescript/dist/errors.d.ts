import type { ServerErrorCode } from "./types.js";
/**
 * Codes the client itself gives: `NETWORK_ERROR` when no answer came (connection refused,
 * DNS, TLS, reset), `INVALID_RESPONSE` when an answer is not one tokenwarden gives (an error
 * without its JSON body, say from a proxy in between, or a body that is not JSON).
 */
export type ClientErrorCode = "NETWORK_ERROR" | "INVALID_RESPONSE";
/**
 * Every code a {@link TokenwardenError} can carry: the server's (README, "Error codes"), the
 * client's own, and any code a newer server adds.
 */
export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});
/** What a {@link TokenwardenError} is made of. */
export interface TokenwardenErrorInit {
    status: number;
    code: ErrorCode;
    message: string;
    reconnect?: boolean;
    retryAfter?: number | null;
    details?: Record<string, unknown>;
    requestId?: string | null;
    cause?: unknown;
}
/**
 * Every failed call: the server's error answer, or (as {@link TokenwardenNetworkError}) no
 * answer at all. Branch on `code` and `reconnect`, never on `message`. Nothing in it is a
 * secret: the server's errors never carry one, and the client never puts the API key or a
 * token in one.
 */
export declare class TokenwardenError extends Error {
    /** The HTTP status; 0 when there was no answer. */
    readonly status: number;
    /** Stable code, e.g. `TOKEN_EXPIRED` or `ACCOUNT_NOT_FOUND`. */
    readonly code: ErrorCode;
    /** True only when the user must reconnect the account (send them through connect again). */
    readonly reconnect: boolean;
    /**
     * Seconds to wait before trying again, when the server said (`retry_after_s`, or the
     * `Retry-After` header): a provider's open circuit breaker, an Instagram token too young
     * to refresh. `null` otherwise.
     */
    readonly retryAfter: number | null;
    /** Context: `account_id`, `provider`, `attempts`, `duration_ms`, `failure`, `field`, … */
    readonly details: Record<string, unknown>;
    /** The server's `X-Request-Id` for this answer, to find it in the server's log. */
    readonly requestId: string | null;
    constructor(init: TokenwardenErrorInit);
}
/**
 * No answer came from the server (`code` `NETWORK_ERROR`, `status` 0): it is down, the
 * address is wrong, or the connection broke. Whether the request reached the server is
 * unknown. `cause` holds what `fetch` threw.
 */
export declare class TokenwardenNetworkError extends TokenwardenError {
    constructor(message: string, cause?: unknown);
}
