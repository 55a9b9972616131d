//! Logs and metrics plumbing: the JSON log subscriber, the Prometheus recorder (installed once
//! per process), metric descriptions, and the series exported from the start.
//!
//! The library records its metrics through the `metrics` facade; this module only installs
//! the recorder and pre-registers series whose labels are known at start, so dashboards and
//! alerts see zeros instead of missing series.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokenwarden::ErrorCode;
use tokenwarden::metrics as m;

use crate::error::UNAUTHORIZED;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing the global recorder on first use. Tests start
/// several apps in one process; they share this recorder.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(m::REFRESH_DURATION_SECONDS.to_owned()),
                    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::REFRESH_ATTEMPTS.to_owned()),
                        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 11.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::COMMIT_ROWS.to_owned()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
                    )
                });
            let builder = match builder {
                Ok(builder) => builder,
                Err(error) => {
                    tracing::warn!(error = %error, "histogram buckets rejected; using summaries");
                    PrometheusBuilder::new()
                }
            };
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    handle
                }
                Err(error) => {
                    // Another recorder owns the process (an embedding application): serve an
                    // empty exposition rather than fail to start.
                    tracing::warn!(error = %error, "metrics recorder already installed elsewhere");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(m::REFRESH_TOTAL, "Refreshes by provider and outcome");
    metrics::describe_histogram!(m::REFRESH_ATTEMPTS, "Upstream attempts per refresh");
    metrics::describe_histogram!(
        m::REFRESH_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of a refresh, retries included"
    );
    metrics::describe_counter!(
        m::AUTO_REFRESH_TOTAL,
        "Refreshes started without being asked"
    );
    metrics::describe_counter!(m::ERRORS_TOTAL, "Errors returned, by code");
    metrics::describe_gauge!(
        m::CIRCUIT_OPEN,
        "1 while a provider's circuit breaker is open"
    );
    metrics::describe_counter!(m::TOKEN_REQUESTS_TOTAL, "Access-token requests by outcome");
    metrics::describe_gauge!(m::CONNECTIONS, "Connections by status");
    metrics::describe_gauge!(
        m::REFRESH_QUEUE,
        "Connections in the refresh schedule: scheduled, due, retrying"
    );
    metrics::describe_histogram!(
        m::COMMIT_ROWS,
        "Connection writes per durable commit (refreshes that finish together share one)"
    );
    metrics::describe_counter!(
        m::UPSTREAM_REQUESTS_TOTAL,
        "Calls to provider token endpoints by provider and HTTP status"
    );
}

/// Registers, at zero, every series whose labels are known at start.
pub fn register_known_series<'a>(providers: impl IntoIterator<Item = &'a str>) {
    for code in ErrorCode::ALL {
        metrics::counter!(m::ERRORS_TOTAL, "code" => code.as_str()).increment(0);
    }
    metrics::counter!(m::ERRORS_TOTAL, "code" => UNAUTHORIZED).increment(0);
    for provider in providers {
        for trigger in ["on_demand", "scheduled"] {
            metrics::counter!(m::AUTO_REFRESH_TOTAL, "provider" => provider.to_owned(), "trigger" => trigger)
                .increment(0);
        }
    }
    for status in ["active", "needs_reconnect"] {
        // The real values arrive with the first gauge update; until then the series exists.
        metrics::gauge!(m::CONNECTIONS, "status" => status).increment(0.0);
    }
}

/// JSON logs filtered by `RUST_LOG`: for the server on stdout (default `info`: one line per
/// request and the refresh log points), for operator commands on stderr (default `warn`), so
/// their stdout stays their output.
///
/// The server's lines are written by a thread of their own (`tracing-appender`), so a request
/// formats its line and moves on instead of waiting for a write to stdout; when that thread
/// falls behind by more than its buffer, requests wait (lines are never dropped). Keep the
/// returned guard alive until the process ends: dropping it flushes what is buffered.
#[must_use = "dropping the guard stops the log writer"]
pub fn init_logging(server: bool) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false);
    if server {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("tokenwarden-log")
            .finish(std::io::stdout());
        let _ = builder.with_writer(writer).try_init();
        Some(guard)
    } else {
        let _ = builder.with_writer(std::io::stderr).try_init();
        None
    }
}
