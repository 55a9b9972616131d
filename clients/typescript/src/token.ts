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
  readonly #token: string;
  /** Usually `Bearer`. */
  readonly tokenType: string;
  /** When the token expires; `null` when the provider gave no expiry. */
  readonly expiresAt: Date | null;

  constructor(accessToken: string, tokenType: string, expiresAt: Date | null) {
    this.#token = accessToken;
    this.tokenType = tokenType;
    this.expiresAt = expiresAt;
  }

  /** The token itself. */
  get accessToken(): string {
    return this.#token;
  }

  /** The `Authorization` header value for the provider's API: `Bearer <token>`. */
  get authorization(): string {
    return `${this.tokenType} ${this.#token}`;
  }

  /** A copy without the token, for logs. */
  toJSON(): { access_token: string; token_type: string; expires_at: string | null } {
    return {
      access_token: "[redacted]",
      token_type: this.tokenType,
      expires_at: this.expiresAt ? this.expiresAt.toISOString() : null,
    };
  }

  toString(): string {
    return `AccessToken(${this.tokenType}, [redacted], expires ${this.expiresAt?.toISOString() ?? "never"})`;
  }

  [inspectCustom](): string {
    return this.toString();
  }
}
