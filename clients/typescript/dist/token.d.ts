declare const inspectCustom: unique symbol;
/**
 * A valid access token, as `getAccessToken` and `getAppAccessToken` give it. Use
 * `accessToken` (or `authorization`, the whole header value) as it is; the server refreshed
 * it first when needed.
 *
 * The token is a secret, so this object keeps it out of what gets printed by accident:
 * `console.log`, `util.inspect`, `JSON.stringify` and `String()` show `[redacted]` in its place.
 */
export declare class AccessToken {
    #private;
    /** Usually `Bearer`. */
    readonly tokenType: string;
    /** When the token expires; `null` when the provider gave no expiry. */
    readonly expiresAt: Date | null;
    constructor(accessToken: string, tokenType: string, expiresAt: Date | null);
    /** The token itself. */
    get accessToken(): string;
    /** The `Authorization` header value for the provider's API: `Bearer <token>`. */
    get authorization(): string;
    /** A copy without the token, for logs. */
    toJSON(): {
        access_token: string;
        token_type: string;
        expires_at: string | null;
    };
    toString(): string;
    [inspectCustom](): string;
}
export {};
