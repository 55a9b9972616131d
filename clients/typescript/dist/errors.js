/**
 * Every failed call: the server's error answer, or (as {@link TokenwardenNetworkError}) no
 * answer at all. Branch on `code` and `reconnect`, never on `message`. Nothing in it is a
 * secret: the server's errors never carry one, and the client never puts the API key or a
 * token in one.
 */
export class TokenwardenError extends Error {
    /** The HTTP status; 0 when there was no answer. */
    status;
    /** Stable code, e.g. `TOKEN_EXPIRED` or `ACCOUNT_NOT_FOUND`. */
    code;
    /** True only when the user must reconnect the account (send them through connect again). */
    reconnect;
    /**
     * Seconds to wait before trying again, when the server said (`retry_after_s`, or the
     * `Retry-After` header): a provider's open circuit breaker, an Instagram token too young
     * to refresh. `null` otherwise.
     */
    retryAfter;
    /** Context: `account_id`, `provider`, `attempts`, `duration_ms`, `failure`, `field`, … */
    details;
    /** The server's `X-Request-Id` for this answer, to find it in the server's log. */
    requestId;
    constructor(init) {
        super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
        this.name = "TokenwardenError";
        this.status = init.status;
        this.code = init.code;
        this.reconnect = init.reconnect ?? false;
        this.retryAfter = init.retryAfter ?? null;
        this.details = init.details ?? {};
        this.requestId = init.requestId ?? null;
    }
}
/**
 * No answer came from the server (`code` `NETWORK_ERROR`, `status` 0): it is down, the
 * address is wrong, or the connection broke. Whether the request reached the server is
 * unknown. `cause` holds what `fetch` threw.
 */
export class TokenwardenNetworkError extends TokenwardenError {
    constructor(message, cause) {
        super({ status: 0, code: "NETWORK_ERROR", message, cause });
        this.name = "TokenwardenNetworkError";
    }
}
