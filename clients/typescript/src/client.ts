import { TokenwardenError, TokenwardenNetworkError } from "./errors.js";
import { Paginated } from "./paging.js";
import { AccessToken } from "./token.js";
import type {
  Connection,
  ConnectionPage,
  ConnectionQuery,
  ConnectionRef,
  ConnectSession,
  ConnectSessionBody,
  CreatedConnectSession,
  Delivery,
  DeliveryPage,
  DeliveryQuery,
  ImportBody,
  Provider,
  RecentEvents,
  RefreshBody,
  TestEvent,
} from "./types.js";
import type { components } from "./schema.js";

/** How to reach tokenwarden. */
export interface TokenwardenOptions {
  /**
   * Where the server listens, e.g. `http://127.0.0.1:8420` (a path prefix is kept, for a
   * server behind a reverse proxy). No user name or password in it: the key is `apiKey`.
   */
  baseUrl: string | URL;
  /** An API key of the server (`[auth] api_keys`), sent as `Authorization: Bearer …`. */
  apiKey: string;
  /** The `fetch` to use (default: the global one); tests and instrumentation pass their own. */
  fetch?: typeof fetch;
}

/** Per call. */
export interface RequestOptions {
  /** Aborts the call; the abort reason is thrown as it is (not as a TokenwardenError). */
  signal?: AbortSignal;
}

/** A call through the proxy: as `fetch`'s init, with the methods the proxy forwards. */
export interface ProxyInit {
  method?: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** The API's headers (tokenwarden drops `Authorization`, `Cookie`, `Host`, hop-by-hop ones). */
  headers?: HeadersInit;
  body?: BodyInit | null;
  signal?: AbortSignal;
}

/** What an import did. */
export interface ImportResult {
  /** The stored connection (no secrets). */
  connection: Connection;
  /** True when the connection is new (201), false when it replaced one (200). */
  created: boolean;
}

type AccessTokenView = components["schemas"]["AccessTokenView"];
type ProviderList = components["schemas"]["ProviderList"];

/** A query without the cursor: lists start at the first page. */
export type ConnectionFilters = Omit<ConnectionQuery, "cursor">;
/** A query without the cursor: lists start at the first page. */
export type DeliveryFilters = Omit<DeliveryQuery, "cursor">;

interface Call {
  method: "GET" | "PUT" | "POST" | "DELETE" | "PATCH";
  /** The path with its segments already encoded. */
  path: string;
  query?: Record<string, string | number | undefined | null>;
  body?: unknown;
  signal?: AbortSignal | undefined;
}

interface Answer {
  status: number;
  body: unknown;
}

/**
 * The tokenwarden HTTP API v1: one method per route. Request bodies, query parameters and
 * answers are the API's JSON exactly as the README's "HTTP API v1" describes them (typed from
 * the server's OpenAPI document); only access tokens come as an {@link AccessToken}.
 *
 * Every failure is a {@link TokenwardenError} (no answer at all: a
 * {@link TokenwardenNetworkError}); a bad argument (an empty id, a `baseUrl` that is not a
 * URL) is a `TypeError` naming it, before anything is sent.
 */
export class Tokenwarden {
  readonly #base: string;
  readonly #apiKey: string;
  readonly #fetch: typeof fetch;

  constructor(options: TokenwardenOptions) {
    if (options === null || typeof options !== "object") {
      throw new TypeError("options: must be an object { baseUrl, apiKey }");
    }
    this.#base = checkBaseUrl(options.baseUrl);
    if (typeof options.apiKey !== "string" || options.apiKey.length === 0) {
      throw new TypeError("apiKey: must be a non-empty string");
    }
    // Visible ASCII only: fetch refuses a header value with a line break or NUL and quotes
    // the whole value (the key) in its error. Refused here, without quoting it.
    if (!/^[\x21-\x7E]+$/.test(options.apiKey)) {
      throw new TypeError(
        "apiKey: must be printable ASCII without spaces (check for a trailing newline)",
      );
    }
    this.#apiKey = options.apiKey;
    if (options.fetch !== undefined && typeof options.fetch !== "function") {
      throw new TypeError("fetch: must be a function");
    }
    // Bound: some runtimes' fetch must be called with globalThis as `this`.
    this.#fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  }

  /** The server this client talks to (never the key). */
  get baseUrl(): string {
    return this.#base;
  }

  /**
   * Creates or replaces a connection from tokens the application holds
   * (`PUT /v1/users/{user_id}/connections/{provider}/{account_id}`).
   */
  async importConnection(
    ref: ConnectionRef,
    body: ImportBody,
    options?: RequestOptions,
  ): Promise<ImportResult> {
    const answer = await this.#call({
      method: "PUT",
      path: connectionPath(ref),
      body,
      signal: options?.signal,
    });
    return { connection: answer.body as Connection, created: answer.status === 201 };
  }

  /** A connection's view, without secrets (`GET …/{account_id}`). */
  async getConnection(ref: ConnectionRef, options?: RequestOptions): Promise<Connection> {
    const answer = await this.#call({
      method: "GET",
      path: connectionPath(ref),
      signal: options?.signal,
    });
    return answer.body as Connection;
  }

  /**
   * A valid access token for the connection, refreshed by the server first when needed
   * (`GET …/{account_id}/access-token`). When the user must reconnect, this throws a
   * {@link TokenwardenError} with `reconnect: true`.
   */
  async getAccessToken(ref: ConnectionRef, options?: RequestOptions): Promise<AccessToken> {
    const answer = await this.#call({
      method: "GET",
      path: `${connectionPath(ref)}/access-token`,
      signal: options?.signal,
    });
    return accessToken(answer);
  }

  /**
   * Refreshes the connection now (`POST …/{account_id}/refresh`), with the server's retry
   * settings or, for this call, `retry`'s (`max_retries`, `initial_delay_ms`,
   * `max_delay_ms`). Answers the updated connection.
   */
  async refresh(
    ref: ConnectionRef,
    retry?: RefreshBody,
    options?: RequestOptions,
  ): Promise<Connection> {
    const answer = await this.#call({
      method: "POST",
      path: `${connectionPath(ref)}/refresh`,
      body: retry,
      signal: options?.signal,
    });
    return answer.body as Connection;
  }

  /**
   * Deletes the connection, revoking it at the provider where the provider supports it
   * (`DELETE …/{account_id}`). A missing one is a 404 `ACCOUNT_NOT_FOUND`.
   */
  async deleteConnection(ref: ConnectionRef, options?: RequestOptions): Promise<void> {
    await this.#call({ method: "DELETE", path: connectionPath(ref), signal: options?.signal });
  }

  /**
   * The connection's newest events, newest first (`GET …/{account_id}/events`; `limit` 1-1000,
   * default 50): the webhook events it raised. Events are recorded only while webhook
   * endpoints are configured; `recording` says whether they are now.
   */
  async connectionEvents(
    ref: ConnectionRef,
    query: { limit?: number } = {},
    options?: RequestOptions,
  ): Promise<RecentEvents> {
    const answer = await this.#call({
      method: "GET",
      path: `${connectionPath(ref)}/events`,
      query: { ...query },
      signal: options?.signal,
    });
    return answer.body as RecentEvents;
  }

  /**
   * Every connection that matches `filters` (`provider`, `user_id`, `status`; `limit` is the
   * page size), page after page as they are consumed:
   * `for await (const connection of tw.listConnections({ status: "needs_reconnect" }))`.
   */
  listConnections(filters: ConnectionFilters = {}, options?: RequestOptions): Paginated<Connection> {
    return new Paginated((cursor) => this.listConnectionsPage({ ...filters, cursor }, options));
  }

  /** One page of `GET /v1/connections`; pass its `next_cursor` as `cursor` for the next. */
  async listConnectionsPage(
    query: ConnectionQuery = {},
    options?: RequestOptions,
  ): Promise<ConnectionPage> {
    const answer = await this.#call({
      method: "GET",
      path: "/v1/connections",
      query: { ...query },
      signal: options?.signal,
    });
    return answer.body as ConnectionPage;
  }

  /** The configured providers (no secrets), each with its circuit breaker's state. */
  async providers(options?: RequestOptions): Promise<Provider[]> {
    const answer = await this.#call({
      method: "GET",
      path: "/v1/providers",
      signal: options?.signal,
    });
    return (answer.body as ProviderList).providers;
  }

  /**
   * The application token of a client-credentials provider, obtained first when needed
   * (`GET /v1/apps/{provider}/access-token`).
   */
  async getAppAccessToken(provider: string, options?: RequestOptions): Promise<AccessToken> {
    const answer = await this.#call({
      method: "GET",
      path: `/v1/apps/${segment("provider", provider)}/access-token`,
      signal: options?.signal,
    });
    return accessToken(answer);
  }

  /**
   * Starts connecting a user's account (`POST /v1/connect/sessions`): send the user's
   * browser to the answer's `connect_url` (single use; keep it out of logs). With an
   * `account_id` naming an existing connection it is a reconnect.
   */
  async createConnectSession(
    body: ConnectSessionBody,
    options?: RequestOptions,
  ): Promise<CreatedConnectSession> {
    const answer = await this.#call({
      method: "POST",
      path: "/v1/connect/sessions",
      body,
      signal: options?.signal,
    });
    return answer.body as CreatedConnectSession;
  }

  /** A connect session: its status, why it failed, the connection once completed. */
  async getConnectSession(id: string, options?: RequestOptions): Promise<ConnectSession> {
    const answer = await this.#call({
      method: "GET",
      path: `/v1/connect/sessions/${segment("id", id)}`,
      signal: options?.signal,
    });
    return answer.body as ConnectSession;
  }

  /**
   * Every webhook delivery that matches `filters` (`status`, `type`, `endpoint`; `limit` is
   * the page size), newest first, page after page as they are consumed.
   */
  deliveries(filters: DeliveryFilters = {}, options?: RequestOptions): Paginated<Delivery> {
    return new Paginated((cursor) => this.deliveriesPage({ ...filters, cursor }, options));
  }

  /** One page of `GET /v1/webhooks/deliveries`. */
  async deliveriesPage(query: DeliveryQuery = {}, options?: RequestOptions): Promise<DeliveryPage> {
    const answer = await this.#call({
      method: "GET",
      path: "/v1/webhooks/deliveries",
      query: { ...query },
      signal: options?.signal,
    });
    return answer.body as DeliveryPage;
  }

  /**
   * Sends a failed delivery again now, with the same event id
   * (`POST /v1/webhooks/deliveries/{id}/retry`). Only a `failed` one can be: others are a 409
   * `WEBHOOK_DELIVERY_NOT_FAILED`.
   */
  async retryDelivery(id: string, options?: RequestOptions): Promise<Delivery> {
    const answer = await this.#call({
      method: "POST",
      path: `/v1/webhooks/deliveries/${segment("id", id)}/retry`,
      signal: options?.signal,
    });
    return answer.body as Delivery;
  }

  /** Sends a `webhook.test` event to one configured endpoint; answers its event id. */
  async testWebhookEndpoint(name: string, options?: RequestOptions): Promise<TestEvent> {
    const answer = await this.#call({
      method: "POST",
      path: `/v1/webhooks/endpoints/${segment("name", name)}/test`,
      signal: options?.signal,
    });
    return answer.body as TestEvent;
  }

  /**
   * Calls the provider's API through tokenwarden
   * (`/v1/proxy/{user_id}/{provider}/{account_id}/{path}`): the server puts the connection's
   * token on the call and, on a 401, refreshes it and sends the call once more
   * (`Tokenwarden-Refreshed: 1` on that answer). `path` is the API's path below its base URL,
   * with its query, encoded as the API expects it (`"projects/group%2Fproject?state=opened"`):
   * it is sent as it is.
   *
   * Resolves with the API's own answer, whatever its status, to read as with `fetch`.
   * tokenwarden's own refusals (no token to be had, a path that would leave the API, an API
   * that cannot be reached or timed out), marked by their `Tokenwarden-Error` header, reject
   * with a {@link TokenwardenError} instead.
   */
  async proxy(ref: ConnectionRef, path: string, init: ProxyInit = {}): Promise<Response> {
    if (typeof path !== "string") throw new TypeError("path: must be a string");
    // fetch resolves dot segments (also %2e-encoded) before sending, which would reach
    // another route of tokenwarden's: refused here (the server refuses every other escape).
    const relative = path.replace(/^\/+/, "");
    const pathOnly = relative.split(/[?#]/, 1)[0] ?? "";
    if (pathOnly.split("/").some((s) => /^(\.|%2e){1,2}$/i.test(s))) {
      throw new TypeError("path: must not have . or .. segments");
    }
    const method = init.method ?? "GET";
    // The call as errors name it: without the query, which may carry the caller's secrets.
    const route = `/v1/proxy/${connectionIds(ref)}/`;
    const call: Call = { method, path: route + pathOnly, signal: init.signal };
    const headers = new Headers(init.headers);
    headers.set("authorization", `Bearer ${this.#apiKey}`);
    const request: RequestInit = { method, headers, redirect: "manual" };
    if (init.body !== undefined && init.body !== null) {
      request.body = init.body;
      // A stream body must say it is sent half-duplex (fetch's rule).
      (request as { duplex?: string }).duplex = "half";
    }
    if (init.signal) request.signal = init.signal;
    const response = await this.#send(call, this.#base + route + relative, request);
    if (!response.headers.has("tokenwarden-error")) return response;
    const requestId = response.headers.get("x-request-id");
    let body: unknown;
    try {
      body = JSON.parse(await response.text());
    } catch {
      body = undefined;
    }
    throw errorFrom(call, response, body, requestId);
  }

  async #call(call: Call): Promise<Answer> {
    let url = this.#base + call.path;
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(call.query ?? {})) {
      if (value !== undefined && value !== null) query.append(name, String(value));
    }
    const search = query.toString();
    if (search) url += `?${search}`;
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.#apiKey}`,
      accept: "application/json",
    };
    const init: RequestInit = { method: call.method, headers, redirect: "manual" };
    if (call.body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(call.body);
    }
    if (call.signal) init.signal = call.signal;

    const response = await this.#send(call, url, init);
    const requestId = response.headers.get("x-request-id");
    const text = await response.text();
    let body: unknown = undefined;
    let parsed = text.length > 0;
    if (parsed) {
      try {
        body = JSON.parse(text);
      } catch {
        parsed = false;
      }
    }
    if (response.ok) {
      if (text.length > 0 && !parsed) {
        throw invalidResponse(call, response.status, requestId, "a body that is not JSON");
      }
      return { status: response.status, body };
    }
    throw errorFrom(call, response, parsed ? body : undefined, requestId);
  }

  /** `fetch`, with a failure to get any answer as a {@link TokenwardenNetworkError}. */
  async #send(call: Call, url: string, init: RequestInit): Promise<Response> {
    try {
      return await this.#fetch(url, init);
    } catch (error) {
      // The caller's own abort is theirs to handle, as with fetch.
      if (call.signal?.aborted) throw error;
      // What fetch says is kept with the key taken out of it; the original error is
      // attached only when neither it nor its cause quotes the key (a header error would).
      const said = describe(error).split(this.#apiKey).join("[redacted]");
      const quotes = mentions(error, this.#apiKey) || mentions(causeOf(error), this.#apiKey);
      throw new TokenwardenNetworkError(
        `${call.method} ${call.path}: no answer from tokenwarden at ${this.#base}: ${said}`,
        quotes ? undefined : error,
      );
    }
  }
}

/** The {@link TokenwardenError} an error answer of tokenwarden's carries (`body` parsed). */
function errorFrom(
  call: Call,
  response: Response,
  body: unknown,
  requestId: string | null,
): TokenwardenError {
  const error = errorObject(body);
  if (!error) {
    return invalidResponse(call, response.status, requestId, "no tokenwarden error body");
  }
  return new TokenwardenError({
    status: response.status,
    code: error.code,
    message: error.message,
    reconnect: error.reconnect === true,
    retryAfter:
      typeof error.retry_after_s === "number"
        ? error.retry_after_s
        : retryAfterHeader(response.headers.get("retry-after")),
    details:
      error.details && typeof error.details === "object" && !Array.isArray(error.details)
        ? (error.details as Record<string, unknown>)
        : {},
    requestId,
  });
}

interface WireError {
  code: string;
  message: string;
  reconnect?: unknown;
  retry_after_s?: unknown;
  details?: unknown;
}

/** The `error` object of tokenwarden's error body, or `null` when `body` is not one. */
function errorObject(body: unknown): WireError | null {
  if (!body || typeof body !== "object") return null;
  const error = (body as { error?: unknown }).error;
  if (!error || typeof error !== "object") return null;
  const { code, message } = error as { code?: unknown; message?: unknown };
  if (typeof code !== "string" || typeof message !== "string") return null;
  return error as WireError;
}

function invalidResponse(
  call: Call,
  status: number,
  requestId: string | null,
  what: string,
): TokenwardenError {
  return new TokenwardenError({
    status,
    code: "INVALID_RESPONSE",
    message: `${call.method} ${call.path}: HTTP ${status} with ${what}: not an answer of tokenwarden's API`,
    requestId,
  });
}

/** `Retry-After` in seconds: delay-seconds, or an HTTP date from now; `null` otherwise. */
function retryAfterHeader(value: string | null): number | null {
  if (value === null) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return null;
  return Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

function accessToken(answer: Answer): AccessToken {
  const view = answer.body as Partial<AccessTokenView> | undefined;
  if (!view || typeof view.access_token !== "string" || typeof view.token_type !== "string") {
    throw new TokenwardenError({
      status: answer.status,
      code: "INVALID_RESPONSE",
      message: "the access-token answer has no access_token or token_type",
    });
  }
  const expiresAt = typeof view.expires_at === "string" ? new Date(view.expires_at) : null;
  return new AccessToken(view.access_token, view.token_type, expiresAt);
}

/** What went wrong in `fetch`, with the system error's code (`ECONNREFUSED`, …) when there. */
function causeOf(error: unknown): unknown {
  return error instanceof Error ? (error as { cause?: unknown }).cause : undefined;
}

/** Whether `value` (an error or anything else) quotes `secret` in its message or string form. */
function mentions(value: unknown, secret: string): boolean {
  if (value === undefined || value === null) return false;
  const text = value instanceof Error ? `${value.message} ${value.stack ?? ""}` : String(value);
  return text.includes(secret);
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = (error as { cause?: unknown }).cause;
  const code =
    cause && typeof cause === "object" && "code" in cause ? ` (${String(cause.code)})` : "";
  return `${error.message}${code}`;
}

function checkBaseUrl(value: unknown): string {
  if (typeof value !== "string" && !(value instanceof URL)) {
    throw new TypeError("baseUrl: must be a string or a URL");
  }
  let url: URL;
  try {
    url = new URL(value instanceof URL ? value.href : value);
  } catch {
    throw new TypeError("baseUrl: must be an absolute http(s) URL, e.g. http://127.0.0.1:8420");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError("baseUrl: must be an http or https URL");
  }
  if (url.username || url.password) {
    throw new TypeError("baseUrl: must not contain a user name or password (use apiKey)");
  }
  if (url.search || url.hash) {
    throw new TypeError("baseUrl: must not have a query or fragment");
  }
  return url.href.replace(/\/+$/, "");
}

/**
 * One path segment, percent-encoded. `.` and `..` cannot be sent: URL parsing (fetch's too)
 * resolves them as dot segments, which would change the route.
 */
function segment(field: string, value: unknown): string {
  if (typeof value !== "string" || value.length === 0) {
    throw new TypeError(`${field}: must be a non-empty string`);
  }
  if (value === "." || value === "..") {
    throw new TypeError(`${field}: "${value}" cannot be sent in a URL path`);
  }
  return encodeURIComponent(value);
}

/** The connection's three ids, checked and encoded as path segments. */
function refSegments(ref: ConnectionRef): [string, string, string] {
  if (ref === null || typeof ref !== "object") {
    throw new TypeError("ref: must be an object { user_id, provider, account_id }");
  }
  return [
    segment("user_id", ref.user_id),
    segment("provider", ref.provider),
    segment("account_id", ref.account_id),
  ];
}

/** `{user_id}/{provider}/{account_id}`, encoded: the proxy route's ids. */
function connectionIds(ref: ConnectionRef): string {
  return refSegments(ref).join("/");
}

function connectionPath(ref: ConnectionRef): string {
  const [user, provider, account] = refSegments(ref);
  return `/v1/users/${user}/connections/${provider}/${account}`;
}
