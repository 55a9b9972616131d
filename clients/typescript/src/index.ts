// @tokenwarden/client: the tokenwarden HTTP API v1 for TypeScript and JavaScript (Node 20+
// and browsers; `fetch` only, no dependencies), and a Standard Webhooks verifier.
export { Tokenwarden } from "./client.js";
export type {
  ConnectionFilters,
  DeliveryFilters,
  ImportResult,
  ProxyInit,
  RequestOptions,
  TokenwardenOptions,
} from "./client.js";
export { TokenwardenError, TokenwardenNetworkError } from "./errors.js";
export type { ClientErrorCode, ErrorCode, TokenwardenErrorInit } from "./errors.js";
export { AccessToken } from "./token.js";
export { Paginated } from "./paging.js";
export type { Page } from "./paging.js";
export {
  DEFAULT_TOLERANCE_SECONDS,
  WebhookVerificationError,
  verifyWebhook,
} from "./webhooks.js";
export type {
  ConnectionEvent,
  ConnectionEventData,
  ConnectSessionFailedEvent,
  ProviderEvent,
  VerifyWebhookOptions,
  WebhookBody,
  WebhookEvent,
  WebhookHeaders,
  WebhookTestEvent,
  WebhookVerificationReason,
} from "./webhooks.js";
export type * from "./types.js";
export type { components, operations, paths } from "./schema.js";
