//! Metric names (SPEC.md) and the helpers that record them through the `metrics` facade.
//! The binary installs the recorder; without one these calls cost almost nothing.

pub const REFRESH_TOTAL: &str = "tokenwarden_refresh_total";
pub const REFRESH_ATTEMPTS: &str = "tokenwarden_refresh_attempts";
pub const REFRESH_DURATION_SECONDS: &str = "tokenwarden_refresh_duration_seconds";
pub const AUTO_REFRESH_TOTAL: &str = "tokenwarden_auto_refresh_total";
pub const ERRORS_TOTAL: &str = "tokenwarden_errors_total";
pub const CIRCUIT_OPEN: &str = "tokenwarden_circuit_open";
pub const TOKEN_REQUESTS_TOTAL: &str = "tokenwarden_token_requests_total";
pub const CONNECTIONS: &str = "tokenwarden_connections";
pub const UPSTREAM_REQUESTS_TOTAL: &str = "tokenwarden_upstream_requests_total";
/// Extension to SPEC.md: the persistent refresh queue, `state` = scheduled | due | retrying.
pub const REFRESH_QUEUE: &str = "tokenwarden_refresh_queue";
/// Extension to SPEC.md: connection writes per durable commit (group commit). Mostly 1 when
/// idle; under load, how many refreshes one fsync covered.
pub const COMMIT_ROWS: &str = "tokenwarden_commit_rows";

/// Extension to SPEC.md: calls through the proxy, by `provider` and the `status_class` of
/// the answer (`2xx` … `5xx`, tokenwarden's own error answers included).
pub const PROXY_REQUESTS_TOTAL: &str = "tokenwarden_proxy_requests_total";
/// Extension to SPEC.md: time from a proxied call's arrival to its answer's headers (a
/// refresh and a second attempt included), by `provider`.
pub const PROXY_DURATION_SECONDS: &str = "tokenwarden_proxy_duration_seconds";

/// Every metric name SPEC.md lists.
pub const ALL: [&str; 9] = [
    REFRESH_TOTAL,
    REFRESH_ATTEMPTS,
    REFRESH_DURATION_SECONDS,
    AUTO_REFRESH_TOTAL,
    ERRORS_TOTAL,
    CIRCUIT_OPEN,
    TOKEN_REQUESTS_TOTAL,
    CONNECTIONS,
    UPSTREAM_REQUESTS_TOTAL,
];

/// Counts one upstream token-endpoint request (`status` is the HTTP status or
/// `timeout` / `error`).
pub fn upstream_request(provider: &str, status: &str) {
    metrics::counter!(UPSTREAM_REQUESTS_TOTAL, "provider" => provider.to_owned(), "status" => status.to_owned())
        .increment(1);
}
