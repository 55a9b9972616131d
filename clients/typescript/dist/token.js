const inspectCustom = Symbol.for("nodejs.util.inspect.custom");
/**
 * A valid access token, as `getAccessToken` and `getAppAccessToken` give it. Use
 * `accessToken` (or `authorization`, the whole header value) as it is; the server refreshed
 * it first when needed.
 *
 * The token is a secret, so this object keeps it out of what gets printed by accident:
 * `console.log`, `util.inspect`, `JSON.stringify` and `String()` show `[redacted]` in its place.
 */
export class AccessToken {
    #token;
    /** Usually `Bearer`. */
    tokenType;
    /** When the token expires; `null` when the provider gave no expiry. */
    expiresAt;
    constructor(accessToken, tokenType, expiresAt) {
        this.#token = accessToken;
        this.tokenType = tokenType;
        this.expiresAt = expiresAt;
    }
    /** The token itself. */
    get accessToken() {
        return this.#token;
    }
    /** The `Authorization` header value for the provider's API: `Bearer <token>`. */
    get authorization() {
        return `${this.tokenType} ${this.#token}`;
    }
    /** A copy without the token, for logs. */
    toJSON() {
        return {
            access_token: "[redacted]",
            token_type: this.tokenType,
            expires_at: this.expiresAt ? this.expiresAt.toISOString() : null,
        };
    }
    toString() {
        return `AccessToken(${this.tokenType}, [redacted], expires ${this.expiresAt?.toISOString() ?? "never"})`;
    }
    [inspectCustom]() {
        return this.toString();
    }
}
