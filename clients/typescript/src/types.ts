// The API's JSON shapes, named: aliases of the generated `components["schemas"]` (see
// schema.ts), so a route or field added to the server reaches the client by
// `npm run generate` alone.
import type { components, operations } from "./schema.js";

type Schemas = components["schemas"];

/** A connection, without secrets (`GET …/connections/…`). */
export type Connection = Schemas["ConnectionView"];
/** The last refresh failure of a connection. */
export type ConnectionLastError = Schemas["LastErrorView"];
/** `active` or `needs_reconnect`. */
export type ConnectionStatus = Connection["status"];
/** One page of `GET /v1/connections`. */
export type ConnectionPage = Schemas["ConnectionList"];
/**
 * The body of an import (`PUT …/connections/{provider}/{account_id}`): tokens the application
 * holds. `access_token` is required; give `expires_in` or `expires_at`, not both.
 */
export type ImportBody = Extract<Schemas["ImportBody"], { access_token: string }>;
/** A configured provider and its circuit breaker (`GET /v1/providers`). */
export type Provider = Schemas["ProviderView"];
/** A provider's circuit breaker. */
export type Breaker = Schemas["BreakerView"];
/** The body of `POST /v1/connect/sessions`. */
export type ConnectSessionBody = Schemas["CreateSessionBody"];
/** A new connect session and its single-use `connect_url` (a secret: send it only to the user). */
export type CreatedConnectSession = Schemas["CreatedSessionView"];
/** A connect session (`GET /v1/connect/sessions/{id}`). */
export type ConnectSession = Schemas["ConnectSessionView"];
/** `pending`, `completed`, `failed` or `expired`. */
export type ConnectSessionStatus = ConnectSession["status"];
/** One webhook delivery: one event to one endpoint. */
export type Delivery = Schemas["DeliveryItem"];
/** `pending`, `delivered` or `failed`. */
export type DeliveryStatus = Delivery["status"];
/** Every event type a delivery can carry, `webhook.test` included. */
export type EventType = Delivery["type"];
/** One page of `GET /v1/webhooks/deliveries`. */
export type DeliveryPage = Schemas["DeliveryList"];
/** The answer of `POST /v1/webhooks/endpoints/{name}/test`. */
export type TestEvent = Schemas["TestEventView"];
/** The error object of every non-2xx answer. */
export type ErrorObject = Schemas["ErrorObject"];
/** Every error code the server answers with. */
export type ServerErrorCode = ErrorObject["code"];

/** One event about a connection, as its webhook body says it (`GET …/{account_id}/events`). */
export type RecentEvent = Schemas["ConnectionEventView"];
/** A connection's newest events, and whether this server records events now. */
export type RecentEvents = Schemas["ConnectionEventList"];

/** The filters and paging of `GET /v1/connections`. */
export type ConnectionQuery = NonNullable<operations["list_connections"]["parameters"]["query"]>;
/** The filters and paging of `GET /v1/webhooks/deliveries`. */
export type DeliveryQuery = NonNullable<operations["list_deliveries"]["parameters"]["query"]>;
/** The optional retry overrides of a forced refresh (`POST …/refresh`). */
export type RefreshBody = Schemas["RefreshBody"];

/**
 * Which connection: `{ user_id, provider, account_id }`. A {@link Connection} is one, so a
 * listed connection can be passed as it is.
 */
export interface ConnectionRef {
  user_id: string;
  provider: string;
  account_id: string;
}
