import { Paginated } from "./paging.js";
import { AccessToken } from "./token.js";
import type { Connection, ConnectionPage, ConnectionQuery, ConnectionRef, ConnectSession, ConnectSessionBody, CreatedConnectSession, Delivery, DeliveryPage, DeliveryQuery, ImportBody, Provider, RecentEvents, RefreshBody, TestEvent } from "./types.js";
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
/** A query without the cursor: lists start at the first page. */
export type ConnectionFilters = Omit<ConnectionQuery, "cursor">;
/** A query without the cursor: lists start at the first page. */
export type DeliveryFilters = Omit<DeliveryQuery, "cursor">;
/**
 * The tokenwarden HTTP API v1: one method per route. Request bodies, query parameters and
 * answers are the API's JSON exactly as the README's "HTTP API v1" describes them (typed from
 * the server's OpenAPI document); only access tokens come as an {@link AccessToken}.
 *
 * Every failure is a {@link TokenwardenError} (no answer at all: a
 * {@link TokenwardenNetworkError}); a bad argument (an empty id, a `baseUrl` that is not a
 * URL) is a `TypeError` naming it, before anything is sent.
 */
export declare class Tokenwarden {
    #private;
    constructor(options: TokenwardenOptions);
    /** The server this client talks to (never the key). */
    get baseUrl(): string;
    /**
     * Creates or replaces a connection from tokens the application holds
     * (`PUT /v1/users/{user_id}/connections/{provider}/{account_id}`).
     */
    importConnection(ref: ConnectionRef, body: ImportBody, options?: RequestOptions): Promise<ImportResult>;
    /** A connection's view, without secrets (`GET …/{account_id}`). */
    getConnection(ref: ConnectionRef, options?: RequestOptions): Promise<Connection>;
    /**
     * A valid access token for the connection, refreshed by the server first when needed
     * (`GET …/{account_id}/access-token`). When the user must reconnect, this throws a
     * {@link TokenwardenError} with `reconnect: true`.
     */
    getAccessToken(ref: ConnectionRef, options?: RequestOptions): Promise<AccessToken>;
    /**
     * Refreshes the connection now (`POST …/{account_id}/refresh`), with the server's retry
     * settings or, for this call, `retry`'s (`max_retries`, `initial_delay_ms`,
     * `max_delay_ms`). Answers the updated connection.
     */
    refresh(ref: ConnectionRef, retry?: RefreshBody, options?: RequestOptions): Promise<Connection>;
    /**
     * Deletes the connection, revoking it at the provider where the provider supports it
     * (`DELETE …/{account_id}`). A missing one is a 404 `ACCOUNT_NOT_FOUND`.
     */
    deleteConnection(ref: ConnectionRef, options?: RequestOptions): Promise<void>;
    /**
     * The connection's newest events, newest first (`GET …/{account_id}/events`; `limit` 1-1000,
     * default 50): the webhook events it raised. Events are recorded only while webhook
     * endpoints are configured; `recording` says whether they are now.
     */
    connectionEvents(ref: ConnectionRef, query?: {
        limit?: number;
    }, options?: RequestOptions): Promise<RecentEvents>;
    /**
     * Every connection that matches `filters` (`provider`, `user_id`, `status`; `limit` is the
     * page size), page after page as they are consumed:
     * `for await (const connection of tw.listConnections({ status: "needs_reconnect" }))`.
     */
    listConnections(filters?: ConnectionFilters, options?: RequestOptions): Paginated<Connection>;
    /** One page of `GET /v1/connections`; pass its `next_cursor` as `cursor` for the next. */
    listConnectionsPage(query?: ConnectionQuery, options?: RequestOptions): Promise<ConnectionPage>;
    /** The configured providers (no secrets), each with its circuit breaker's state. */
    providers(options?: RequestOptions): Promise<Provider[]>;
    /**
     * The application token of a client-credentials provider, obtained first when needed
     * (`GET /v1/apps/{provider}/access-token`).
     */
    getAppAccessToken(provider: string, options?: RequestOptions): Promise<AccessToken>;
    /**
     * Starts connecting a user's account (`POST /v1/connect/sessions`): send the user's
     * browser to the answer's `connect_url` (single use; keep it out of logs). With an
     * `account_id` naming an existing connection it is a reconnect.
     */
    createConnectSession(body: ConnectSessionBody, options?: RequestOptions): Promise<CreatedConnectSession>;
    /** A connect session: its status, why it failed, the connection once completed. */
    getConnectSession(id: string, options?: RequestOptions): Promise<ConnectSession>;
    /**
     * Every webhook delivery that matches `filters` (`status`, `type`, `endpoint`; `limit` is
     * the page size), newest first, page after page as they are consumed.
     */
    deliveries(filters?: DeliveryFilters, options?: RequestOptions): Paginated<Delivery>;
    /** One page of `GET /v1/webhooks/deliveries`. */
    deliveriesPage(query?: DeliveryQuery, options?: RequestOptions): Promise<DeliveryPage>;
    /**
     * Sends a failed delivery again now, with the same event id
     * (`POST /v1/webhooks/deliveries/{id}/retry`). Only a `failed` one can be: others are a 409
     * `WEBHOOK_DELIVERY_NOT_FAILED`.
     */
    retryDelivery(id: string, options?: RequestOptions): Promise<Delivery>;
    /** Sends a `webhook.test` event to one configured endpoint; answers its event id. */
    testWebhookEndpoint(name: string, options?: RequestOptions): Promise<TestEvent>;
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
    proxy(ref: ConnectionRef, path: string, init?: ProxyInit): Promise<Response>;
}
