//! The application: a [`Warden`] built from configuration, the accepted API keys and the
//! metrics handle, plus [`run`], which serves it until a shutdown future resolves.
//!
//! `run` takes its listener and shutdown signal as arguments (mini-redis's shape) so tests
//! start the real app on `127.0.0.1:0` and stop it deterministically. Background tasks
//! (metrics upkeep, the connections gauge, the library's refresh scheduler) are owned by
//! `run` and stopped with it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, header};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokenwarden::provider::{self, HttpClient};
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::{Role, Store};
use tokenwarden::webhooks::worker::{WebhookConfig, Webhooks};
use tokenwarden::{KeyRing, ProviderName, Warden};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::api;
use crate::auth::ApiKeys;
use crate::config::{Config, ConfigError};

/// Why the app could not start. Messages name keys and paths, never values.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Store(String),
    #[error("outbound HTTP client: {0}")]
    Http(String),
    #[error("{0}")]
    Io(String),
}

/// The running application's shared state (cheap to clone).
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    warden: Warden,
    webhooks: Webhooks,
    connector: tokenwarden::connect::Connector,
    api_keys: ApiKeys,
    metrics: PrometheusHandle,
    proxy: crate::proxy::Proxy,
    config: Config,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("api_keys", &self.inner.api_keys)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the app from a validated configuration.
    pub async fn build(config: Config, metrics: PrometheusHandle) -> Result<Self, StartError> {
        let api_keys = ApiKeys::from_config(config.auth.api_keys.iter().map(|k| k.expose_secret()))
            .map_err(|message| ConfigError::key("auth.api_keys", message))?;
        crate::telemetry::register_known_series(config.providers.keys().map(String::as_str));
        let connect = config.connect_config()?;
        let (warden, webhooks) = build_parts(&config, Role::Instance).await?;
        let connector = tokenwarden::connect::Connector::new(warden.clone(), connect);
        if let Err(error) = warden.update_connection_gauges().await {
            tracing::warn!(error = %error, "could not compute the connections gauge");
        }
        let proxy = crate::proxy::Proxy::new(&config, &warden)
            .map_err(|e| StartError::Http(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                warden,
                webhooks,
                connector,
                api_keys,
                metrics,
                proxy,
                config,
            }),
        })
    }

    pub fn warden(&self) -> &Warden {
        &self.inner.warden
    }

    /// Webhook delivery.
    pub fn webhooks(&self) -> &Webhooks {
        &self.inner.webhooks
    }

    /// The connect flow.
    pub fn connector(&self) -> &tokenwarden::connect::Connector {
        &self.inner.connector
    }

    pub fn api_keys(&self) -> &ApiKeys {
        &self.inner.api_keys
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The proxy to providers' APIs.
    pub fn proxy(&self) -> &crate::proxy::Proxy {
        &self.inner.proxy
    }

    pub fn max_body_bytes(&self) -> usize {
        self.inner.config.server.max_body_bytes
    }

    /// The configured default retry policy (request overrides are checked against it).
    pub fn refresh_policy(&self) -> RetryPolicy {
        self.warden().refresh_config().retry
    }

    /// All routes with their middleware.
    ///
    /// The middleware wraps the finished router once, instead of being layered onto every
    /// route with `Router::layer`: axum boxes each layered route and clones the box (and
    /// every box inside it) per request, which made 11 allocations per request and about a
    /// tenth of a fresh token's cost (see BENCHMARKS.md, "HTTP fast path"). Outermost first:
    /// the `Authorization` header is marked sensitive before anything could print it, the
    /// request id exists before the request's span is made, the span and access line cover
    /// everything inside (authentication and 401s included), the id is copied onto every
    /// response, and the body limit applies to every route that reads a body.
    pub fn router(&self) -> Router {
        self.router_with_ids(SequentialRequestIds::new())
    }

    /// The service `run` serves: the access-token fast path (`fast_path.rs`) in front of
    /// [`App::router`]. Both make request ids from one counter.
    pub fn service(&self) -> crate::fast_path::FastPath {
        let ids = SequentialRequestIds::new();
        crate::fast_path::FastPath::new(self.clone(), self.router_with_ids(ids.clone()), ids)
    }

    fn router_with_ids(&self, ids: SequentialRequestIds) -> Router {
        let v1 = Router::new()
            .route(
                "/v1/users/{user_id}/connections/{provider}/{account_id}",
                get(api::get_connection)
                    .put(api::put_connection)
                    .delete(api::delete_connection),
            )
            .route(
                "/v1/users/{user_id}/connections/{provider}/{account_id}/access-token",
                get(api::get_access_token),
            )
            .route(
                "/v1/users/{user_id}/connections/{provider}/{account_id}/refresh",
                axum::routing::post(api::refresh_connection),
            )
            .route(
                "/v1/users/{user_id}/connections/{provider}/{account_id}/events",
                get(crate::webhooks::connection_events),
            )
            .route(
                "/v1/apps/{provider}/access-token",
                get(api::get_app_access_token),
            )
            .route("/v1/connections", get(api::list_connections))
            .route("/v1/providers", get(api::list_providers))
            .route(
                "/v1/connect/sessions",
                axum::routing::post(crate::connect::create_session),
            )
            .route(
                "/v1/connect/sessions/{id}",
                get(crate::connect::get_session),
            )
            .route(
                "/v1/webhooks/deliveries",
                get(crate::webhooks::list_deliveries),
            )
            .route(
                "/v1/webhooks/deliveries/{id}/retry",
                axum::routing::post(crate::webhooks::retry_delivery),
            )
            .route(
                "/v1/webhooks/endpoints/{name}/test",
                axum::routing::post(crate::webhooks::test_endpoint),
            )
            // Every method reaches the handler, which answers 405 itself for those it does
            // not forward. Its body is read raw: `server.max_body_bytes` does not apply.
            .route(
                "/v1/proxy/{user_id}/{provider}/{account_id}/{*path}",
                axum::routing::any(crate::proxy::forward),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                api::require_api_key,
            ));

        let routes = Router::new()
            .merge(v1)
            .route("/healthz", get(api::healthz))
            .route("/readyz", get(api::readyz))
            .route("/metrics", get(api::metrics))
            .route("/openapi.json", get(api::openapi_json))
            // The browser's side of the connect flow: no API key (the link's token, the
            // state and the flow cookie are its credentials).
            .route("/connect/callback", get(crate::connect::callback))
            .route("/connect/{token}", get(crate::connect::open_link))
            // The dashboard's files: no API key (they hold no data; the page asks for a key
            // and sends it to the /v1 routes above).
            .route("/ui", get(crate::ui::redirect))
            .route("/ui/", get(crate::ui::index))
            .route("/ui/{*file}", get(crate::ui::asset))
            .fallback(api::fallback)
            .with_state(self.clone());

        let trace = TraceLayer::new_for_http()
            .make_span_with(crate::telemetry::request_span)
            .on_response(crate::telemetry::AccessLog);
        let service = ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
            ]))
            .layer(SetRequestIdLayer::x_request_id(ids))
            .layer(trace)
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(DefaultBodyLimit::max(self.max_body_bytes()))
            .service(routes);
        Router::new().fallback_service(service)
    }
}

/// Request ids for requests that bring none: a random per-process prefix and a counter
/// (`3f9a0c1e-17`). Unique within a process and across restarts in practice, and far cheaper
/// than a random UUID per request (no system call on the hot path).
#[derive(Clone, Debug)]
pub struct SequentialRequestIds {
    prefix: u32,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl SequentialRequestIds {
    fn new() -> Self {
        Self {
            prefix: rand::random(),
            next: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for SequentialRequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // `{prefix:08x}-{n:x}`, at most 8 + 1 + 16 characters, written on the stack (the
        // formatting machinery cost more than the rest of the id) and copied once: both in
        // full, then `n`'s leading zeros dropped.
        let mut buf = [0u8; 8 + 1 + 16];
        hex::encode_to_slice(self.prefix.to_be_bytes(), &mut buf[..8]).ok()?;
        buf[8] = b'-';
        hex::encode_to_slice(n.to_be_bytes(), &mut buf[9..]).ok()?;
        let zeros = buf[9..buf.len() - 1]
            .iter()
            .take_while(|&&b| b == b'0')
            .count();
        buf.copy_within(9 + zeros.., 9);
        axum::http::HeaderValue::from_bytes(&buf[..buf.len() - zeros])
            .ok()
            .map(RequestId::new)
    }
}

/// Builds the library's [`Warden`] from configuration for a command beside the server (the
/// CLI): key ring, store, providers, settings, the same as [`App::build`]'s. It opens the
/// database as a [`Role::Tool`], so `connections list`, `import`, `refresh` and
/// `keys rotate` work while `tokenwarden serve` runs on the same SQLite file.
pub async fn build_warden(config: &Config) -> Result<Warden, StartError> {
    build_warden_as(config, Role::Tool).await
}

/// [`build_warden`] for a process in the given [`Role`]: `serve` is the
/// [`Role::Instance`], and on SQLite only one may hold a database file.
pub async fn build_warden_as(config: &Config, role: Role) -> Result<Warden, StartError> {
    Ok(build_parts(config, role).await?.0)
}

/// The warden and the webhook delivery over one store: the store's outbox is on when
/// endpoints are configured (so every process that writes, the CLI included, records the
/// events), and provider breakers report to the webhooks. Only a serving instance runs the
/// delivery loop.
pub async fn build_parts(config: &Config, role: Role) -> Result<(Warden, Webhooks), StartError> {
    let active = config
        .encryption
        .active_key
        .as_deref()
        .ok_or_else(|| ConfigError::key("encryption.active_key", "required"))?;
    let keys = KeyRing::from_base64(
        active,
        config
            .encryption
            .keys
            .iter()
            .map(|(id, key)| (id.as_str(), key.expose_secret())),
    )
    .map_err(|e| ConfigError::key("encryption", e.to_string()))?;
    let store = connect_store(&config.database_url, Arc::new(keys), role).await?;
    let http =
        HttpClient::new(config.http_settings()).map_err(|e| StartError::Http(e.to_string()))?;
    let mut providers = Vec::with_capacity(config.providers.len());
    for (name, provider_config) in &config.providers {
        let parsed = ProviderName::parse(name.as_str())
            .map_err(|e| ConfigError::key(format!("providers.{name}"), e.to_string()))?;
        // A provider with an `issuer` reads its metadata now; a failure stops the start.
        let built = provider::build_discovering(parsed, provider_config, http.clone())
            .await
            .map_err(|e| {
                ConfigError::key(format!("providers.{}.{}", e.provider, e.key), e.message)
            })?;
        providers.push(built);
    }
    let instance_id = tokenwarden::new_instance_id();
    let webhooks = Webhooks::new(
        Arc::clone(&store),
        WebhookConfig {
            endpoints: config.webhook_endpoints()?,
            schedule: config.webhook_schedule(),
            keep: Duration::from_secs(config.webhooks.keep_seconds),
        },
        Arc::new(tokenwarden::clock::SystemClock),
        instance_id.clone(),
    )
    .map_err(|e| StartError::Http(e.to_string()))?;
    let warden = Warden::builder(store)
        .providers(providers)
        .refresh_config(config.refresh_config())
        .breaker_config(config.breaker_config())
        .scheduler_config(config.scheduler_config())
        .instance_id(instance_id)
        .circuit_changes(webhooks.circuit_changes())
        .build()
        // The server's own checks come first and name config keys; this catches the rest.
        .map_err(|e| ConfigError::key(e.field, e.problem))?;
    Ok((warden, webhooks))
}

/// Opens the store named by `database_url` (SQLite or PostgreSQL) in `role`, creating the
/// SQLite file's directory if needed. A second `serve` on one SQLite file fails here, with
/// a message naming the file and the process that holds it.
async fn connect_store(
    database_url: &str,
    keys: Arc<KeyRing>,
    role: Role,
) -> Result<Arc<dyn Store>, StartError> {
    if let Some(path) = sqlite_path(database_url)
        && let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        crate::bootstrap::create_private_dir(parent)
            .map_err(|e| StartError::Io(format!("creating {}: {e}", parent.display())))?;
    }
    tokenwarden::store::connect_as(database_url, keys, role)
        .await
        .map_err(|e| StartError::Store(e.to_string()))
}

/// The file path of a `sqlite:` URL (`None` for in-memory databases).
pub fn sqlite_path(database_url: &str) -> Option<std::path::PathBuf> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let rest = rest.split('?').next().unwrap_or(rest);
    if rest.is_empty() || rest == ":memory:" {
        return None;
    }
    Some(std::path::PathBuf::from(rest))
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// for up to `server.shutdown_timeout_seconds`.
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(upkeep_loop(app.metrics().clone(), stop_rx.clone()));
    let gauge_every = Duration::from_secs(app.config().server.gauge_interval_seconds);
    tasks.spawn(gauge_loop(
        app.warden().clone(),
        gauge_every,
        stop_rx.clone(),
    ));
    if app.config().scheduler.enabled {
        let warden = app.warden().clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            warden
                .run_scheduler(async move {
                    let _ = stop.changed().await;
                })
                .await;
        });
    }

    if app.webhooks().enabled() {
        let webhooks = app.webhooks().clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            webhooks
                .run(async move {
                    let _ = stop.changed().await;
                })
                .await;
        });
    }

    let grace = Duration::from_secs(app.config().server.shutdown_timeout_seconds);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(addr = %addr, "listening");
    }
    let mut graceful = stop_rx.clone();
    let service = tower::make::Shared::new(app.service());
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|stop| *stop).await;
    });
    let stopper = async {
        shutdown.await;
        tracing::info!(
            grace_s = grace.as_secs(),
            "shutting down: draining in-flight requests"
        );
        let _ = stop_tx.send(true);
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = async { server.await } => result,
        () = stopper => {
            tracing::warn!("shutdown timeout reached with requests still in flight");
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    // Last, the warden's own tasks: refreshes whose callers went away may still hold a
    // rotated grant to commit.
    app.warden().shutdown(grace).await;
    tracing::info!("stopped");
    result
}

/// Without the exporter's HTTP listener nobody else drains histograms: do it every 5 s.
async fn upkeep_loop(handle: PrometheusHandle, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = stop.changed() => return,
        }
    }
}

/// Recomputes `tokenwarden_connections{status}`: other instances and the CLI write too.
async fn gauge_loop(warden: Warden, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(error) = warden.update_connection_gauges().await {
                    tracing::warn!(error = %error, "could not update the connections gauge");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://tokenwarden-data/tokenwarden.db"),
            Some("tokenwarden-data/tokenwarden.db".into())
        );
        assert_eq!(
            sqlite_path("sqlite:///abs/x.db?mode=rwc"),
            Some("/abs/x.db".into())
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }

    #[test]
    fn generated_request_ids_are_the_prefix_and_the_counter_in_hex() {
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut ids = SequentialRequestIds {
            prefix: 0x00ab_0c1e,
            next: Arc::clone(&counter),
        };
        let request = Request::new(());
        let mut next = || {
            let id = ids.make_request_id(&request).expect("an id");
            id.header_value().to_str().expect("ascii").to_owned()
        };
        assert_eq!(next(), "00ab0c1e-0");
        assert_eq!(next(), "00ab0c1e-1");
        counter.store(0x1f, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(next(), "00ab0c1e-1f");
        counter.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(next(), "00ab0c1e-ffffffffffffffff");
    }
}
