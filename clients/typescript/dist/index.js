// @tokenwarden/client: the tokenwarden HTTP API v1 for TypeScript and JavaScript (Node 20+
// and browsers; `fetch` only, no dependencies), and a Standard Webhooks verifier.
export { Tokenwarden } from "./client.js";
export { TokenwardenError, TokenwardenNetworkError } from "./errors.js";
export { AccessToken } from "./token.js";
export { Paginated } from "./paging.js";
export { DEFAULT_TOLERANCE_SECONDS, WebhookVerificationError, verifyWebhook, } from "./webhooks.js";
