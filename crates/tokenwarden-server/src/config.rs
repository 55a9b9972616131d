//! Configuration: one TOML file plus `TOKENWARDEN_*` environment overrides, validated at start.
//!
//! Loading goes file → `toml::Table` → environment merged into that table → typed [`Config`]
//! → [`Config::validate`]. Merging before deserializing means every key has exactly one
//! override form (`TOKENWARDEN_` + the key path in upper case, sections joined by `__`) and
//! unknown keys are rejected the same way whether they came from the file or the environment.
//! Errors name the key, never the value: configuration holds secrets.
//!
//! This module does not create files; the embedded first-run default lives in `bootstrap`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokenwarden::provider::{HttpSettings, ProviderConfig};
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::webhooks::{EndpointConfig, EventType, WebhookSecret};
use tokenwarden::{BreakerConfig, ProviderName, RefreshConfig, SchedulerConfig};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "TOKENWARDEN_";

/// Largest `max_retries` accepted in configuration and in a refresh request.
pub const MAX_RETRIES_LIMIT: u32 = 10;
/// Largest retry delay accepted in configuration and in a refresh request, in milliseconds.
pub const MAX_DELAY_MS_LIMIT: u64 = 60_000;

/// The whole configuration. Its `Debug` hides the credentials of `database_url` (a
/// PostgreSQL URL may carry a password); the other secrets are redacted types.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:8420`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Default `sqlite://tokenwarden-data/tokenwarden.db`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    #[serde(default)]
    pub encryption: EncryptionSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub refresh: RefreshSection,
    #[serde(default)]
    pub breaker: BreakerSection,
    #[serde(default)]
    pub scheduler: SchedulerSection,
    /// Extension: limits of the HTTP server itself.
    #[serde(default)]
    pub server: ServerSection,
    /// Extension: timeouts of calls to providers (token endpoints and the proxy).
    #[serde(default)]
    pub upstream: UpstreamSection,
    /// The proxy to providers' APIs.
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Where browsers reach tokenwarden (the connect flow). Default `http://` + `listen`.
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub connect: ConnectSection,
    #[serde(default)]
    pub webhooks: WebhooksSection,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &without_credentials(&self.database_url))
            .field("encryption", &self.encryption)
            .field("auth", &self.auth)
            .field("refresh", &self.refresh)
            .field("breaker", &self.breaker)
            .field("scheduler", &self.scheduler)
            .field("server", &self.server)
            .field("upstream", &self.upstream)
            .field("proxy", &self.proxy)
            .field("providers", &self.providers)
            .field("public_url", &self.public_url)
            .field("connect", &self.connect)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

/// `scheme://user:password@host/db?password=…` as `scheme://<redacted>@host/db?<redacted>`:
/// a password can be in the user part or in the query.
fn without_credentials(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((url, _)) => (url, "?<redacted>"),
        None => (url, ""),
    };
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://<redacted>{}{query}", &url[..scheme_end], &url[at..])
        }
        _ => format!("{url}{query}"),
    }
}

/// `[encryption]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSection {
    /// Key id new ciphertexts use. Required with a configuration file.
    #[serde(default)]
    pub active_key: Option<String>,
    /// Key id → base64 of 32 bytes. Every id still in use must stay listed.
    #[serde(default)]
    pub keys: BTreeMap<String, ConfigSecret>,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Plain keys or `sha256:<hex>`. Required with a configuration file.
    #[serde(default)]
    pub api_keys: Vec<ConfigSecret>,
}

/// `[refresh]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshSection {
    pub threshold_seconds: u64,
    pub max_retries: u32,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub max_retry_after_seconds: u64,
    /// Extension: how long a token cached in memory is trusted before the database is read
    /// again (bounds staleness when another instance refreshes). Default 5000 ms.
    pub cache_ttl_ms: u64,
    /// Extension: most tokens kept in the in-memory cache. Default 100,000.
    pub cache_max_entries: u64,
    /// Extension: upper bound on one upstream attempt. Default 20 s.
    pub attempt_timeout_seconds: u64,
    /// Extension: length of the renewable database lease a refresh holds; a crashed instance
    /// blocks a connection for at most this long. Default 15 s.
    pub lease_seconds: u64,
}

impl Default for RefreshSection {
    fn default() -> Self {
        Self {
            threshold_seconds: 300,
            max_retries: 3,
            initial_delay_ms: 1000,
            max_delay_ms: 10_000,
            max_retry_after_seconds: 60,
            cache_ttl_ms: 5000,
            cache_max_entries: 100_000,
            attempt_timeout_seconds: 20,
            lease_seconds: 15,
        }
    }
}

/// `[breaker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSection {
    pub failure_threshold: u32,
    pub open_seconds: u64,
}

impl Default for BreakerSection {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_seconds: 10,
        }
    }
}

/// `[scheduler]`: proactive refresh and the persistent retry queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSection {
    pub enabled: bool,
    pub lead_seconds: u64,
    pub max_retry_delay_seconds: u64,
    /// Extension: first delay of the retry queue's backoff. Default 5 s.
    pub initial_retry_delay_seconds: u64,
    /// Extension: keep-alive refresh interval for tokens without expiry that have a refresh
    /// token. Default 30 days.
    pub keepalive_seconds: u64,
    /// Extension: connections claimed per round. Default 100.
    pub batch_size: u64,
    /// Extension: scheduled refreshes running at once. Default 64.
    pub concurrency: u64,
    /// Extension: longest sleep between rounds. Default 30 s.
    pub max_idle_seconds: u64,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self {
            enabled: true,
            lead_seconds: 600,
            max_retry_delay_seconds: 600,
            initial_retry_delay_seconds: 5,
            keepalive_seconds: 30 * 86_400,
            batch_size: 100,
            concurrency: 64,
            max_idle_seconds: 30,
        }
    }
}

/// `[server]` (extension).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Largest accepted request body. Default 64 KiB.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT. Default 30 s.
    pub shutdown_timeout_seconds: u64,
    /// How often the `tokenwarden_connections` gauge is recomputed. Default 60 s.
    pub gauge_interval_seconds: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            shutdown_timeout_seconds: 30,
            gauge_interval_seconds: 60,
        }
    }
}

/// `[connect]`: the connect flow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectSection {
    /// How long a connect session and its link live. Default 900 s.
    pub session_ttl_seconds: u64,
    /// The return URLs a session may name (compared without the query). Empty: no session
    /// can be created.
    pub return_urls: Vec<String>,
}

impl Default for ConnectSection {
    fn default() -> Self {
        Self {
            session_ttl_seconds: 900,
            return_urls: Vec::new(),
        }
    }
}

/// `[webhooks]`: the events tokenwarden POSTs to your endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSection {
    /// How long an event is retried before it is marked failed. Default 86,400 s (one day);
    /// 60 s to 30 days.
    pub retry_for_seconds: u64,
    /// Ceiling on an endpoint's `Retry-After`. Default 600 s; 1 s to one day.
    pub max_retry_after_seconds: u64,
    /// How long an event and its deliveries are kept once none is pending (listed and
    /// retried by hand meanwhile), then deleted. Default 604,800 s (7 days); 1 h to 366 days.
    pub keep_seconds: u64,
    /// `[webhooks.endpoints.NAME]`, by name. Default: none.
    pub endpoints: BTreeMap<String, EndpointSection>,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        Self {
            retry_for_seconds: 86_400,
            max_retry_after_seconds: 600,
            keep_seconds: 604_800,
            endpoints: BTreeMap::new(),
        }
    }
}

/// `[webhooks.endpoints.NAME]`: one receiver. Checked by [`Config::webhook_endpoints`].
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// Where events are POSTed: https, or http to localhost / a loopback IP. Required.
    pub url: String,
    /// `whsec_<base64 of 24-64 bytes>` (`tokenwarden webhooks secret` prints one). Exactly one
    /// of `secret` and `secrets` is required.
    #[serde(default)]
    pub secret: Option<ConfigSecret>,
    /// Several secrets during a rotation: every message is signed with each, in order.
    #[serde(default)]
    pub secrets: Option<Vec<ConfigSecret>>,
    /// Event types this endpoint receives. Default: all of them.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Upper bound on one delivery attempt. Default 10,000 ms; 100 to 60,000.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_webhook_timeout_ms() -> u64 {
    10_000
}

/// The URL without credentials or query (it may carry a token); secrets are redacted types.
impl fmt::Debug for EndpointSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSection")
            .field("url", &without_credentials(&self.url))
            .field("secret", &self.secret)
            .field("secrets", &self.secrets)
            .field("events", &self.events)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// `[upstream]` (extension): outbound calls to token endpoints and through the proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    /// Longest wait for a connection to a provider. Default 5,000 ms.
    pub connect_timeout_ms: u64,
    /// A token-endpoint call, whole (default 15,000 ms). Through the proxy: the longest wait
    /// for the response's headers, and then for each part of its body (a long download is
    /// not cut off while data keeps coming).
    pub request_timeout_ms: u64,
}

/// `[proxy]`: calls to providers' APIs through `/v1/proxy/...`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// Request bodies up to this size are kept so the call can be sent again after an
    /// upstream 401 and a refresh; larger ones stream through once. Default 1 MiB (1,048,576);
    /// 0 to 64 MiB.
    pub max_replay_bytes: usize,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            max_replay_bytes: tokenwarden::proxy::DEFAULT_MAX_REPLAY_BYTES,
        }
    }
}

impl Default for UpstreamSection {
    fn default() -> Self {
        let d = HttpSettings::default();
        Self {
            connect_timeout_ms: u64::try_from(d.connect_timeout.as_millis()).unwrap_or(5000),
            request_timeout_ms: u64::try_from(d.request_timeout.as_millis()).unwrap_or(15_000),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8420))
}

fn default_database_url() -> String {
    "sqlite://tokenwarden-data/tokenwarden.db".to_owned()
}

/// A secret configuration value: redacted in `Debug`, never displayed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ConfigSecret(String);

impl ConfigSecret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself; every caller is a place the secret leaves its box.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// A configuration problem. It names the key (or file, or variable), never the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Key { key: String, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

impl ConfigError {
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file (given with `--config` or `TOKENWARDEN_CONFIG`).
    File(PathBuf),
    /// No file: defaults plus environment; `bootstrap` fills in keys from the data dir.
    Embedded,
}

/// Reads `path` (if any), merges `env` overrides and deserializes. Does not validate.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table = match path {
        Some(path) => read_table(path)?,
        None => toml::Table::new(),
    };
    merge_env(&mut table, env)?;
    from_table(table)
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    text.parse::<toml::Table>().map_err(|e| {
        // toml's Display quotes the offending source line, which may hold a secret: report
        // only the message and the line number.
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let message = match line {
            Some(line) => format!("line {line}: {}", e.message()),
            None => e.message().to_owned(),
        };
        ConfigError::File {
            path: path.to_owned(),
            message,
        }
    })
}

/// Deserializes a merged table into a [`Config`], naming the key on error.
pub fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            "config".to_owned()
        } else {
            path
        };
        ConfigError::key(key, redact_quoted(&e.inner().to_string()))
    })
}

/// Removes offending values from a serde message: serde quotes string values in `"..."` and
/// an unknown enum variant in backticks. Key names (`unknown field `x``) stay.
pub fn redact_quoted(message: &str) -> String {
    let message = &redact_scalars(message);
    // serde: "unknown variant `{value}`, expected …" (or ", there are no variants"). The
    // value is not escaped and may hold backticks, so it ends at the last "`, " before the
    // tail serde adds, never at its first backtick.
    const VARIANT: &str = "unknown variant `";
    if let Some(start) = message.find(VARIANT) {
        let rest = &message[start + VARIANT.len()..];
        let end = ["`, expected", "`, there are no variants"]
            .iter()
            .filter_map(|tail| rest.rfind(tail))
            .max();
        let tail = end.map_or("", |end| &rest[end + 1..]);
        return format!(
            "{}unknown variant <redacted>{}",
            redact_quoted(&message[..start]),
            redact_quoted(tail)
        );
    }
    let mut out = String::with_capacity(message.len());
    let mut in_quote = false;
    // serde quotes with `{:?}`: a quote inside the value is `\"` and must not end it.
    let mut escaped = false;
    for c in message.chars() {
        match (c, in_quote) {
            ('"', false) => {
                in_quote = true;
                out.push_str("<redacted>");
            }
            (_, true) if escaped => escaped = false,
            ('\\', true) => escaped = true,
            ('"', true) => in_quote = false,
            (c, false) => out.push(c),
            (_, true) => {}
        }
    }
    out
}

/// serde shows a wrongly typed scalar in backticks (``integer `123` ``, ``floating point
/// `1.5` ``, ``boolean `true` ``, ``character `x` ``): a numeric secret written without
/// quotes would be echoed. The value is at least one character, up to the next backtick.
fn redact_scalars(message: &str) -> String {
    const KINDS: [&str; 4] = ["integer `", "floating point `", "boolean `", "character `"];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((at, kind)) = KINDS
        .iter()
        .filter_map(|kind| rest.find(kind).map(|at| (at, kind)))
        .min()
    {
        let value_start = at + kind.len();
        out.push_str(&rest[..value_start - 1]);
        out.push_str("<redacted>");
        let value = &rest[value_start..];
        let first = value.chars().next().map_or(0, char::len_utf8);
        rest = value[first..]
            .find('`')
            .map_or("", |end| &value[first + end + 1..]);
    }
    out.push_str(rest);
    out
}

/// Top-level keys an environment variable may override. Other `TOKENWARDEN_*` variables
/// (`TOKENWARDEN_CONFIG`, `TOKENWARDEN_DATA_DIR`, test variables) are not configuration keys.
const TOP_LEVEL_KEYS: [&str; 14] = [
    "listen",
    "public_url",
    "connect",
    "database_url",
    "encryption",
    "auth",
    "refresh",
    "breaker",
    "scheduler",
    "server",
    "upstream",
    "proxy",
    "providers",
    "webhooks",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvKind {
    Str,
    Int,
    Bool,
    List,
}

/// The type a key needs, so `"5"` from the environment becomes an integer where one is needed
/// and a numeric-looking secret stays a string.
fn env_kind(path: &[String]) -> EnvKind {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["auth", "api_keys"] => EnvKind::List,
        ["scheduler", "enabled"] => EnvKind::Bool,
        [
            "refresh" | "breaker" | "scheduler" | "server" | "upstream" | "proxy",
            _,
        ] => EnvKind::Int,
        ["providers", _, "rate_limit_per_second"] => EnvKind::Int,
        ["providers", _, "scopes"] => EnvKind::List,
        ["connect", "session_ttl_seconds"] => EnvKind::Int,
        ["connect", "return_urls"] => EnvKind::List,
        [
            "webhooks",
            "retry_for_seconds" | "max_retry_after_seconds" | "keep_seconds",
        ] => EnvKind::Int,
        ["webhooks", "endpoints", _, "timeout_ms"] => EnvKind::Int,
        ["webhooks", "endpoints", _, "secrets" | "events"] => EnvKind::List,
        _ => EnvKind::Str,
    }
}

/// Merges `TOKENWARDEN_<PATH>` variables into `table`.
pub fn merge_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    // Deterministic order, so a conflict between two variables is reported the same way.
    vars.sort();
    for (name, value) in vars {
        let rest = &name[ENV_PREFIX.len()..];
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if !TOP_LEVEL_KEYS.contains(&path[0].as_str()) {
            continue;
        }
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::key(
                name,
                "empty key segment (use `__` between sections)",
            ));
        }
        let parsed = match env_kind(&path) {
            EnvKind::Str => toml::Value::String(value),
            EnvKind::Int => value
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| ConfigError::key(&name, "expected an integer"))?,
            EnvKind::Bool => match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => toml::Value::Boolean(true),
                "false" | "0" | "no" => toml::Value::Boolean(false),
                _ => return Err(ConfigError::key(&name, "expected true or false")),
            },
            EnvKind::List => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
        };
        set_path(table, &path, parsed).map_err(|message| ConfigError::key(&name, message))?;
    }
    Ok(())
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for (i, segment) in parents.iter().enumerate() {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{} is not a section", path[..=i].join(".")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

impl Config {
    /// The `[refresh]` section as the library's settings.
    pub fn refresh_config(&self) -> RefreshConfig {
        let r = &self.refresh;
        RefreshConfig {
            threshold: Duration::from_secs(r.threshold_seconds),
            retry: RetryPolicy {
                max_retries: r.max_retries,
                initial_delay: Duration::from_millis(r.initial_delay_ms),
                max_delay: Duration::from_millis(r.max_delay_ms),
            },
            max_retry_after: Duration::from_secs(r.max_retry_after_seconds),
            cache_ttl: Duration::from_millis(r.cache_ttl_ms),
            cache_max_entries: usize::try_from(r.cache_max_entries).unwrap_or(usize::MAX),
            attempt_timeout: Duration::from_secs(r.attempt_timeout_seconds),
            lease_ttl: Duration::from_secs(r.lease_seconds),
        }
    }

    /// The `[breaker]` section as the library's settings.
    pub fn breaker_config(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.breaker.failure_threshold,
            open_for: Duration::from_secs(self.breaker.open_seconds),
        }
    }

    /// The `[scheduler]` section as the library's settings (other knobs keep their defaults).
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            enabled: self.scheduler.enabled,
            lead: Duration::from_secs(self.scheduler.lead_seconds),
            max_retry_delay: Duration::from_secs(self.scheduler.max_retry_delay_seconds),
            initial_retry_delay: Duration::from_secs(self.scheduler.initial_retry_delay_seconds),
            keepalive: Duration::from_secs(self.scheduler.keepalive_seconds),
            batch_size: u32::try_from(self.scheduler.batch_size).unwrap_or(u32::MAX),
            concurrency: usize::try_from(self.scheduler.concurrency).unwrap_or(usize::MAX),
            max_idle: Duration::from_secs(self.scheduler.max_idle_seconds),
        }
    }

    /// Outbound HTTP settings for provider calls.
    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            connect_timeout: Duration::from_millis(self.upstream.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.upstream.request_timeout_ms),
            ..HttpSettings::default()
        }
    }

    /// The connect flow's settings, checked.
    pub fn connect_config(&self) -> Result<tokenwarden::connect::ConnectConfig, ConfigError> {
        let web_url = |key: &str, value: &str| -> Result<url::Url, ConfigError> {
            let url = url::Url::parse(value.trim())
                .map_err(|e| ConfigError::key(key, format!("not an absolute URL ({e})")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(ConfigError::key(
                    key,
                    "must be an http or https URL with a host",
                ));
            }
            if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
                return Err(ConfigError::key(
                    key,
                    "must not have a fragment or user info",
                ));
            }
            Ok(url)
        };
        let public_url = match &self.public_url {
            Some(value) => {
                let url = web_url("public_url", value)?;
                if url.query().is_some() {
                    return Err(ConfigError::key("public_url", "must not have a query"));
                }
                url
            }
            None => url::Url::parse(&format!("http://{}", self.listen))
                .map_err(|e| ConfigError::key("listen", e.to_string()))?,
        };
        range(
            "connect.session_ttl_seconds",
            self.connect.session_ttl_seconds,
            60,
            86_400,
        )?;
        let return_urls = self
            .connect
            .return_urls
            .iter()
            .enumerate()
            .map(|(i, u)| web_url(&format!("connect.return_urls[{i}]"), u))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(tokenwarden::connect::ConnectConfig {
            public_url,
            session_ttl: Duration::from_secs(self.connect.session_ttl_seconds),
            return_urls,
        })
    }

    /// The webhook retry schedule: `[webhooks]` over the defaults (5 s doubling to 1 h).
    pub fn webhook_schedule(&self) -> tokenwarden::webhooks::delivery::RetrySchedule {
        tokenwarden::webhooks::delivery::RetrySchedule {
            retry_for: Duration::from_secs(self.webhooks.retry_for_seconds),
            max_retry_after: Duration::from_secs(self.webhooks.max_retry_after_seconds),
            ..tokenwarden::webhooks::delivery::RetrySchedule::default()
        }
    }

    /// The `[webhooks.endpoints.*]` tables as checked library settings, sorted by name.
    /// Errors name the key (`webhooks.endpoints.NAME.secret`), never a secret or the URL.
    pub fn webhook_endpoints(&self) -> Result<Vec<EndpointConfig>, ConfigError> {
        self.webhooks
            .endpoints
            .iter()
            .map(|(name, section)| webhook_endpoint(name, section))
            .collect()
    }

    /// Checks every value, returning the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.connect_config()?;
        let r = &self.refresh;
        range(
            "refresh.threshold_seconds",
            r.threshold_seconds,
            0,
            30 * 86_400,
        )?;
        range(
            "refresh.max_retries",
            u64::from(r.max_retries),
            0,
            u64::from(MAX_RETRIES_LIMIT),
        )?;
        range(
            "refresh.initial_delay_ms",
            r.initial_delay_ms,
            1,
            MAX_DELAY_MS_LIMIT,
        )?;
        range(
            "refresh.max_delay_ms",
            r.max_delay_ms,
            1,
            MAX_DELAY_MS_LIMIT,
        )?;
        if r.initial_delay_ms > r.max_delay_ms {
            return Err(ConfigError::key(
                "refresh.initial_delay_ms",
                "must be ≤ refresh.max_delay_ms",
            ));
        }
        range(
            "refresh.max_retry_after_seconds",
            r.max_retry_after_seconds,
            1,
            3600,
        )?;
        range(
            "breaker.failure_threshold",
            u64::from(self.breaker.failure_threshold),
            1,
            10_000,
        )?;
        range("breaker.open_seconds", self.breaker.open_seconds, 1, 86_400)?;
        range(
            "scheduler.lead_seconds",
            self.scheduler.lead_seconds,
            1,
            30 * 86_400,
        )?;
        range(
            "scheduler.max_retry_delay_seconds",
            self.scheduler.max_retry_delay_seconds,
            1,
            86_400,
        )?;
        let sc = &self.scheduler;
        range(
            "scheduler.initial_retry_delay_seconds",
            sc.initial_retry_delay_seconds,
            1,
            86_400,
        )?;
        range(
            "scheduler.keepalive_seconds",
            sc.keepalive_seconds,
            3600,
            365 * 86_400,
        )?;
        range("scheduler.batch_size", sc.batch_size, 1, 10_000)?;
        range("scheduler.concurrency", sc.concurrency, 1, 1024)?;
        range("scheduler.max_idle_seconds", sc.max_idle_seconds, 1, 3600)?;
        range("refresh.cache_ttl_ms", r.cache_ttl_ms, 0, 3_600_000)?;
        range(
            "refresh.cache_max_entries",
            r.cache_max_entries,
            1,
            100_000_000,
        )?;
        range(
            "refresh.attempt_timeout_seconds",
            r.attempt_timeout_seconds,
            1,
            600,
        )?;
        range("refresh.lease_seconds", r.lease_seconds, 3, 3600)?;
        let max_body = u64::try_from(self.server.max_body_bytes).unwrap_or(u64::MAX);
        range("server.max_body_bytes", max_body, 1024, 16 * 1024 * 1024)?;
        range(
            "server.shutdown_timeout_seconds",
            self.server.shutdown_timeout_seconds,
            0,
            3600,
        )?;
        range(
            "server.gauge_interval_seconds",
            self.server.gauge_interval_seconds,
            1,
            86_400,
        )?;
        range(
            "upstream.connect_timeout_ms",
            self.upstream.connect_timeout_ms,
            1,
            120_000,
        )?;
        range(
            "upstream.request_timeout_ms",
            self.upstream.request_timeout_ms,
            1,
            600_000,
        )?;
        let max_replay = u64::try_from(self.proxy.max_replay_bytes).unwrap_or(u64::MAX);
        range("proxy.max_replay_bytes", max_replay, 0, 64 * 1024 * 1024)?;

        let url = self.database_url.as_str();
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            return Err(ConfigError::key(
                "database_url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }

        range(
            "webhooks.retry_for_seconds",
            self.webhooks.retry_for_seconds,
            60,
            30 * 86_400,
        )?;
        range(
            "webhooks.keep_seconds",
            self.webhooks.keep_seconds,
            3_600,
            366 * 86_400,
        )?;
        range(
            "webhooks.max_retry_after_seconds",
            self.webhooks.max_retry_after_seconds,
            1,
            86_400,
        )?;
        self.webhook_endpoints()?;

        self.validate_encryption()?;
        self.validate_auth()?;
        for name in self.providers.keys() {
            ProviderName::parse(name.as_str()).map_err(|_| {
                ConfigError::key(
                    format!("providers.{name}"),
                    "provider names must be 1-64 characters of a-z, 0-9, '_' or '-'",
                )
            })?;
        }
        Ok(())
    }

    fn validate_encryption(&self) -> Result<(), ConfigError> {
        let e = &self.encryption;
        if e.keys.is_empty() {
            return Err(ConfigError::key(
                "encryption.keys",
                "at least one key is required (generate one with `tokenwarden keys generate`)",
            ));
        }
        let Some(active) = &e.active_key else {
            return Err(ConfigError::key("encryption.active_key", "required"));
        };
        if !e.keys.contains_key(active) {
            return Err(ConfigError::key(
                "encryption.active_key",
                "names a key id that is not in encryption.keys",
            ));
        }
        for (id, key) in &e.keys {
            tokenwarden::KeyRing::from_base64(id, [(id.as_str(), key.expose_secret())]).map_err(
                |_| {
                    ConfigError::key(
                        format!("encryption.keys.{id}"),
                        "key ids must be 1-32 characters of A-Z a-z 0-9 _ - . and keys base64 \
                         of exactly 32 bytes",
                    )
                },
            )?;
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        if self.auth.api_keys.is_empty() {
            return Err(ConfigError::key(
                "auth.api_keys",
                "at least one API key is required (plain or sha256:<hex>)",
            ));
        }
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            crate::auth::parse_configured_key(key.expose_secret())
                .map_err(|message| ConfigError::key(format!("auth.api_keys[{i}]"), message))?;
        }
        Ok(())
    }
}

/// One `[webhooks.endpoints.NAME]` table, checked key by key so each error names its key.
fn webhook_endpoint(name: &str, section: &EndpointSection) -> Result<EndpointConfig, ConfigError> {
    let key = |field: &str| format!("webhooks.endpoints.{name}.{field}");
    tokenwarden::webhooks::check_endpoint_name(name)
        .map_err(|message| ConfigError::key(format!("webhooks.endpoints.{name}"), message))?;

    // url::ParseError's message does not contain the input.
    let url = url::Url::parse(&section.url)
        .map_err(|e| ConfigError::key(key("url"), format!("not an absolute URL ({e})")))?;
    tokenwarden::webhooks::check_endpoint_url(&url)
        .map_err(|message| ConfigError::key(key("url"), message))?;

    let parse_secret = |key: String, secret: &ConfigSecret| {
        WebhookSecret::parse(secret.expose_secret())
            .map_err(|e| ConfigError::key(key, e.to_string()))
    };
    let secrets = match (&section.secret, &section.secrets) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::key(
                format!("webhooks.endpoints.{name}"),
                "set `secret` or `secrets`, not both",
            ));
        }
        (None, None) => {
            return Err(ConfigError::key(
                key("secret"),
                "required, or `secrets` during a rotation (`tokenwarden webhooks secret` \
                 prints a new one)",
            ));
        }
        (Some(secret), None) => vec![parse_secret(key("secret"), secret)?],
        (None, Some(list)) if list.is_empty() => {
            return Err(ConfigError::key(
                key("secrets"),
                "at least one secret is required",
            ));
        }
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, secret)| parse_secret(key(&format!("secrets[{i}]")), secret))
            .collect::<Result<Vec<_>, _>>()?,
    };

    let events: BTreeSet<EventType> = match &section.events {
        None => EventType::ALL.into_iter().collect(),
        Some(list) if list.is_empty() => {
            return Err(ConfigError::key(
                key("events"),
                "at least one event type is required (leave `events` out for all of them)",
            ));
        }
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, event)| parse_event(&key(&format!("events[{i}]")), event))
            .collect::<Result<_, _>>()?,
    };

    range(&key("timeout_ms"), section.timeout_ms, 100, 60_000)?;
    let timeout = Duration::from_millis(section.timeout_ms);

    // Everything was checked above; the library checks again and names its own field.
    EndpointConfig::new(name, url, secrets, events, timeout).map_err(|e| {
        let field = match e.field {
            "endpoint.url" => "url",
            "endpoint.secrets" => "secrets",
            "endpoint.events" => "events",
            "endpoint.timeout" => "timeout_ms",
            _ => return ConfigError::key(format!("webhooks.endpoints.{name}"), e.problem),
        };
        ConfigError::key(key(field), e.problem)
    })
}

/// A subscribable event type. The message lists the valid names; it does not repeat the
/// value, like every other configuration error.
fn parse_event(key: &str, name: &str) -> Result<EventType, ConfigError> {
    match EventType::parse(name) {
        Some(event) if event.is_subscribable() => Ok(event),
        Some(_) => Err(ConfigError::key(
            key,
            "webhook.test is sent only by the endpoint test route and cannot be subscribed to",
        )),
        None => {
            let names: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
            Err(ConfigError::key(
                key,
                format!("unknown event type; expected one of {}", names.join(", ")),
            ))
        }
    }
}

fn range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min {
        Err(ConfigError::key(key, format!("must be ≥ {min}")))
    } else if value > max {
        Err(ConfigError::key(key, format!("must be ≤ {max}")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_database_credentials() {
        assert_eq!(
            without_credentials("postgres://tw:hunter2@db:5432/tw"),
            "postgres://<redacted>@db:5432/tw"
        );
        assert_eq!(
            without_credentials("sqlite:///var/tw.db"),
            "sqlite:///var/tw.db"
        );
        assert_eq!(
            without_credentials("postgres://db/tw?user=tw&password=hunter2"),
            "postgres://db/tw?<redacted>"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_match_spec() {
        let c = load(None, env(&[])).expect("defaults load");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8420");
        assert_eq!(c.database_url, "sqlite://tokenwarden-data/tokenwarden.db");
        assert_eq!(c.refresh.max_retries, 3);
        assert_eq!(c.refresh.initial_delay_ms, 1000);
        assert_eq!(c.breaker.failure_threshold, 5);
        assert!(c.scheduler.enabled);
    }

    #[test]
    fn env_overrides_are_typed_by_key() {
        let c = load(
            None,
            env(&[
                ("TOKENWARDEN_REFRESH__MAX_RETRIES", "5"),
                ("TOKENWARDEN_SCHEDULER__ENABLED", "false"),
                (
                    "TOKENWARDEN_AUTH__API_KEYS",
                    "aaaaaaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbbbbbb",
                ),
                ("TOKENWARDEN_PROVIDERS__TIKTOK__KIND", "tiktok"),
                ("TOKENWARDEN_PROVIDERS__TIKTOK__CLIENT_SECRET", "12345"),
                ("TOKENWARDEN_PROVIDERS__TIKTOK__RATE_LIMIT_PER_SECOND", "7"),
                ("TOKENWARDEN_CONFIG", "/ignored"),
                ("TOKENWARDEN_TEST_POSTGRES_URL", "postgres://ignored"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.refresh.max_retries, 5);
        assert!(!c.scheduler.enabled);
        assert_eq!(c.auth.api_keys.len(), 2);
        let tiktok = &c.providers["tiktok"];
        assert_eq!(tiktok.rate_limit_per_second, Some(7));
        assert_eq!(
            tiktok.client_secret.as_ref().map(|s| s.expose_secret()),
            Some("12345")
        );
    }

    #[test]
    fn connect_settings_come_from_the_environment_too() {
        let c = load(
            None,
            env(&[
                ("TOKENWARDEN_PUBLIC_URL", "https://tokens.example.com"),
                ("TOKENWARDEN_CONNECT__SESSION_TTL_SECONDS", "600"),
                (
                    "TOKENWARDEN_CONNECT__RETURN_URLS",
                    "https://a.example.com/done, https://b.example.com/done",
                ),
            ]),
        )
        .expect("loads");
        let connect = c.connect_config().expect("valid");
        assert_eq!(connect.public_url.as_str(), "https://tokens.example.com/");
        assert_eq!(connect.session_ttl.as_secs(), 600);
        assert_eq!(connect.return_urls.len(), 2);
    }

    #[test]
    fn catalog_keys_come_from_the_environment_too() {
        let c = load(
            None,
            env(&[
                ("TOKENWARDEN_PROVIDERS__CONTOSO__CATALOG", "microsoft"),
                (
                    "TOKENWARDEN_PROVIDERS__CONTOSO__URL_PARAMS__TENANT",
                    "contoso",
                ),
                (
                    "TOKENWARDEN_PROVIDERS__CONTOSO__SCOPES",
                    "openid, offline_access",
                ),
                (
                    "TOKENWARDEN_PROVIDERS__CONTOSO__GRANT",
                    "client_credentials",
                ),
            ]),
        )
        .expect("loads");
        let contoso = &c.providers["contoso"];
        assert_eq!(contoso.catalog.as_deref(), Some("microsoft"));
        assert_eq!(contoso.url_params["tenant"], "contoso");
        assert_eq!(
            contoso.scopes.as_deref(),
            Some(&["openid".to_owned(), "offline_access".to_owned()][..])
        );
        assert_eq!(
            contoso.grant,
            Some(tokenwarden::provider::Grant::ClientCredentials)
        );
    }

    #[test]
    fn env_overrides_file_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[refresh]\nmax_retries = 2\nmax_delay_ms = 500\n").expect("write");
        let c = load(
            Some(&path),
            env(&[("TOKENWARDEN_REFRESH__MAX_RETRIES", "4")]),
        )
        .expect("ok");
        assert_eq!(c.refresh.max_retries, 4);
        assert_eq!(c.refresh.max_delay_ms, 500);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let err = load(None, env(&[("TOKENWARDEN_REFRESH__MAX_RETRIEZ", "1")])).expect_err("bad");
        assert!(err.to_string().contains("max_retriez"), "{err}");
        let mut t = toml::Table::new();
        t.insert("nope".into(), toml::Value::Integer(1));
        assert!(from_table(t).is_err());
    }

    #[test]
    fn errors_name_the_key_not_the_value() {
        let err = load(None, env(&[("TOKENWARDEN_REFRESH__MAX_RETRIES", "s3cr3t")]))
            .expect_err("not a number");
        let text = err.to_string();
        assert!(text.contains("TOKENWARDEN_REFRESH__MAX_RETRIES"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");

        let err = load(
            None,
            env(&[("TOKENWARDEN_PROVIDERS__X__KIND", "sup3rsecret")]),
        )
        .expect_err("bad kind");
        let text = err.to_string();
        assert!(text.starts_with("providers.x.kind"), "{text}");
        assert!(!text.contains("sup3rsecret"), "{text}");
    }

    #[test]
    fn validation_names_keys() {
        let mut c = load(None, env(&[])).expect("defaults");
        c.encryption.active_key = Some("k1".into());
        c.encryption.keys.insert(
            "k1".into(),
            ConfigSecret::new(tokenwarden::KeyRing::generate_key_base64()),
        );
        c.auth
            .api_keys
            .push(ConfigSecret::new("0123456789abcdef-key"));
        c.validate().expect("valid");
        c.refresh.max_retries = 11;
        assert_eq!(
            c.validate().expect_err("too many").to_string(),
            "refresh.max_retries: must be ≤ 10"
        );
        c.refresh.max_retries = 3;
        c.encryption
            .keys
            .insert("k2".into(), ConfigSecret::new("bm90LWEta2V5"));
        let text = c.validate().expect_err("bad key").to_string();
        assert!(text.starts_with("encryption.keys.k2"), "{text}");
        assert!(!text.contains("bm90LWEta2V5"));
    }

    /// Defaults plus the keys `validate` requires, so a test changes only what it checks.
    fn valid(toml_text: &str, env_vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml_text.parse().expect("test TOML");
        let key = tokenwarden::KeyRing::generate_key_base64();
        let base = format!(
            "[encryption]\nactive_key = \"k1\"\nkeys = {{ k1 = \"{key}\" }}\n\
             [auth]\napi_keys = [\"0123456789abcdef-key\"]\n"
        );
        for (k, v) in base.parse::<toml::Table>().expect("base TOML") {
            table.entry(k).or_insert(v);
        }
        merge_env(&mut table, env(env_vars))?;
        let c = from_table(table)?;
        c.validate()?;
        Ok(c)
    }

    fn whsec() -> String {
        WebhookSecret::generate().expose_secret().to_owned()
    }

    #[test]
    fn webhooks_default_to_no_endpoints() {
        let c = valid("", &[]).expect("valid");
        assert_eq!(c.webhooks.retry_for_seconds, 86_400);
        assert_eq!(c.webhooks.max_retry_after_seconds, 600);
        assert_eq!(c.webhooks.keep_seconds, 604_800);
        assert!(c.webhook_endpoints().expect("none").is_empty());
    }

    #[test]
    fn webhook_endpoints_from_the_file() {
        let (a, b, c1) = (whsec(), whsec(), whsec());
        let c = valid(
            &format!(
                r#"
                [webhooks]
                retry_for_seconds = 3600
                max_retry_after_seconds = 30
                keep_seconds = 86400
                [webhooks.endpoints.ops]
                url = "https://hooks.example.com/tw?token=abc"
                secret = "{a}"
                [webhooks.endpoints.local-dev]
                url = "http://127.0.0.1:9000/hook"
                secrets = ["{b}", "{c1}"]
                events = ["connection.needs_reconnect", "provider.circuit_opened"]
                timeout_ms = 2500
                "#
            ),
            &[],
        )
        .expect("valid");
        assert_eq!(c.webhooks.retry_for_seconds, 3600);
        assert_eq!(c.webhooks.max_retry_after_seconds, 30);
        assert_eq!(c.webhooks.keep_seconds, 86_400);
        let endpoints = c.webhook_endpoints().expect("valid endpoints");
        let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["local-dev", "ops"]);
        let (dev, ops) = (&endpoints[0], &endpoints[1]);

        assert_eq!(ops.url.as_str(), "https://hooks.example.com/tw?token=abc");
        let secrets: Vec<&str> = ops.secrets.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(secrets, [a.as_str()]);
        assert_eq!(ops.events, EventType::ALL.into_iter().collect());
        assert_eq!(ops.timeout, Duration::from_secs(10), "default timeout_ms");

        let secrets: Vec<&str> = dev.secrets.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(secrets, [b.as_str(), c1.as_str()], "in the order written");
        assert_eq!(
            dev.events,
            [
                EventType::ConnectionNeedsReconnect,
                EventType::ProviderCircuitOpened
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(dev.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn webhook_endpoints_from_the_environment() {
        let (a, b, c1) = (whsec(), whsec(), whsec());
        let c = valid(
            "",
            &[
                ("TOKENWARDEN_WEBHOOKS__RETRY_FOR_SECONDS", "120"),
                ("TOKENWARDEN_WEBHOOKS__MAX_RETRY_AFTER_SECONDS", "5"),
                (
                    "TOKENWARDEN_WEBHOOKS__ENDPOINTS__OPS__URL",
                    "https://h.example/x",
                ),
                ("TOKENWARDEN_WEBHOOKS__ENDPOINTS__OPS__SECRET", &a),
                (
                    "TOKENWARDEN_WEBHOOKS__ENDPOINTS__OPS__EVENTS",
                    "connection.created, connection.deleted",
                ),
                ("TOKENWARDEN_WEBHOOKS__ENDPOINTS__OPS__TIMEOUT_MS", "750"),
                (
                    "TOKENWARDEN_WEBHOOKS__ENDPOINTS__ROTATING__URL",
                    "https://h.example/y",
                ),
                (
                    "TOKENWARDEN_WEBHOOKS__ENDPOINTS__ROTATING__SECRETS",
                    &format!("{b}, {c1}"),
                ),
            ],
        )
        .expect("valid");
        assert_eq!(c.webhooks.retry_for_seconds, 120);
        assert_eq!(c.webhooks.max_retry_after_seconds, 5);
        let endpoints = c.webhook_endpoints().expect("valid endpoints");
        let (ops, rotating) = (&endpoints[0], &endpoints[1]);
        assert_eq!(ops.name, "ops");
        assert_eq!(ops.secrets[0].expose_secret(), a);
        assert_eq!(
            ops.events,
            [EventType::ConnectionCreated, EventType::ConnectionDeleted]
                .into_iter()
                .collect()
        );
        assert_eq!(ops.timeout, Duration::from_millis(750));
        let secrets: Vec<&str> = rotating.secrets.iter().map(|s| s.expose_secret()).collect();
        assert_eq!(secrets, [b.as_str(), c1.as_str()]);
    }

    /// The environment overrides a file's secret, as it does every other key.
    #[test]
    fn webhook_secret_from_the_environment_overrides_the_file() {
        let (file, env_secret) = (whsec(), whsec());
        let c = valid(
            &format!(
                "[webhooks.endpoints.ops]\nurl = \"https://h.example/\"\nsecret = \"{file}\"\n"
            ),
            &[("TOKENWARDEN_WEBHOOKS__ENDPOINTS__OPS__SECRET", &env_secret)],
        )
        .expect("valid");
        let endpoints = c.webhook_endpoints().expect("valid");
        assert_eq!(endpoints[0].secrets[0].expose_secret(), env_secret);
    }

    /// Each bad endpoint table: the error starts with the key path and never contains the
    /// value that was wrong (a secret, or a URL that may hold a token).
    #[test]
    fn webhook_errors_name_the_key_and_hide_the_value() {
        let good = whsec();
        let short = format!("whsec_{}", "c2hvcnQtc2VjcmV0LXZhbHVl"); // 18 bytes
        let no_prefix = good.trim_start_matches("whsec_").to_owned();
        let endpoint = |body: &str| format!("[webhooks.endpoints.ops]\n{body}\n");
        let url = "url = \"https://hooks.example.com/tw\"";
        let cases: Vec<(String, &str, &str)> = vec![
            (
                endpoint(&format!("{url}\nsecret = \"{short}\"")),
                "webhooks.endpoints.ops.secret: ",
                "at least 24",
            ),
            (
                endpoint(&format!("{url}\nsecret = \"{no_prefix}\"")),
                "webhooks.endpoints.ops.secret: ",
                "whsec_",
            ),
            (
                endpoint(&format!("{url}\nsecrets = [\"{good}\", \"{short}\"]")),
                "webhooks.endpoints.ops.secrets[1]: ",
                "at least 24",
            ),
            (
                endpoint(&format!(
                    "{url}\nsecret = \"{good}\"\nsecrets = [\"{good}\"]"
                )),
                "webhooks.endpoints.ops: ",
                "not both",
            ),
            (endpoint(url), "webhooks.endpoints.ops.secret: ", "required"),
            (
                endpoint(&format!("{url}\nsecrets = []")),
                "webhooks.endpoints.ops.secrets: ",
                "at least one",
            ),
            (
                endpoint(&format!("{url}\nsecret = 123456789012345678")),
                "webhooks.endpoints.ops.secret: ",
                "invalid type",
            ),
            (
                endpoint(&format!(
                    "url = \"http://hooks.example.com/?token=s3cr3t\"\nsecret = \"{good}\""
                )),
                "webhooks.endpoints.ops.url: ",
                "must be https",
            ),
            (
                endpoint(&format!(
                    "url = \"https://user:s3cr3t@hooks.example.com/\"\nsecret = \"{good}\""
                )),
                "webhooks.endpoints.ops.url: ",
                "user info",
            ),
            (
                endpoint(&format!("url = \"s3cr3t\"\nsecret = \"{good}\"")),
                "webhooks.endpoints.ops.url: ",
                "not an absolute URL",
            ),
            (
                endpoint(&format!("secret = \"{good}\"")),
                "webhooks.endpoints.ops: ",
                "missing field `url`",
            ),
            (
                endpoint(&format!(
                    "{url}\nsecret = \"{good}\"\nevents = [\"connection.made\"]"
                )),
                "webhooks.endpoints.ops.events[0]: ",
                "unknown event type; expected one of connection.created,",
            ),
            (
                endpoint(&format!(
                    "{url}\nsecret = \"{good}\"\nevents = [\"connection.created\", \"webhook.test\"]"
                )),
                "webhooks.endpoints.ops.events[1]: ",
                "cannot be subscribed",
            ),
            (
                endpoint(&format!("{url}\nsecret = \"{good}\"\nevents = []")),
                "webhooks.endpoints.ops.events: ",
                "at least one",
            ),
            (
                endpoint(&format!("{url}\nsecret = \"{good}\"\ntimeout_ms = 99")),
                "webhooks.endpoints.ops.timeout_ms: ",
                "≥ 100",
            ),
            (
                endpoint(&format!("{url}\nsecret = \"{good}\"\ntimeout_ms = 60001")),
                "webhooks.endpoints.ops.timeout_ms: ",
                "≤ 60000",
            ),
            (
                endpoint(&format!("{url}\nsecert = \"{good}\"")),
                "webhooks.endpoints.ops.secert: ",
                "unknown field `secert`",
            ),
            (
                format!("[webhooks.endpoints.Ops]\n{url}\nsecret = \"{good}\"\n"),
                "webhooks.endpoints.Ops: ",
                "a-z, 0-9",
            ),
            (
                "[webhooks]\nretry_for_seconds = 59\n".to_owned(),
                "webhooks.retry_for_seconds: ",
                "≥ 60",
            ),
            (
                "[webhooks]\nretry_for_seconds = 2592001\n".to_owned(),
                "webhooks.retry_for_seconds: ",
                "≤ 2592000",
            ),
            (
                "[webhooks]\nkeep_seconds = 3599\n".to_owned(),
                "webhooks.keep_seconds: ",
                "≥ 3600",
            ),
            (
                "[webhooks]\nmax_retry_after_seconds = 0\n".to_owned(),
                "webhooks.max_retry_after_seconds: ",
                "≥ 1",
            ),
            (
                "[webhooks]\nmax_retry_after_seconds = 86401\n".to_owned(),
                "webhooks.max_retry_after_seconds: ",
                "≤ 86400",
            ),
        ];
        for (text, prefix, says) in cases {
            let err = valid(&text, &[]).expect_err(&text).to_string();
            assert!(err.starts_with(prefix), "{text}\n=> {err}");
            assert!(err.contains(says), "{text}\n=> {err}");
            for value in [
                good.as_str(),
                short.as_str(),
                no_prefix.as_str(),
                "s3cr3t",
                "123456789012345678",
                "connection.made",
            ] {
                assert!(!err.contains(value), "{text}\n=> {err} echoes a value");
            }
        }
    }

    #[test]
    fn webhook_secret_errors_from_the_environment_hide_the_value() {
        let err = valid(
            "",
            &[
                (
                    "TOKENWARDEN_WEBHOOKS__ENDPOINTS__OPS__URL",
                    "https://h.example/",
                ),
                (
                    "TOKENWARDEN_WEBHOOKS__ENDPOINTS__OPS__SECRET",
                    "whsec_s3cr3t+",
                ),
            ],
        )
        .expect_err("bad secret")
        .to_string();
        assert!(err.starts_with("webhooks.endpoints.ops.secret: "), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        let err = valid(
            "",
            &[("TOKENWARDEN_WEBHOOKS__ENDPOINTS__OPS__TIMEOUT_MS", "s3cr3t")],
        )
        .expect_err("not a number")
        .to_string();
        assert!(
            err.starts_with("TOKENWARDEN_WEBHOOKS__ENDPOINTS__OPS__TIMEOUT_MS"),
            "{err}"
        );
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn config_debug_hides_webhook_secrets_and_url_queries() {
        let (a, b) = (whsec(), whsec());
        let c = valid(
            &format!(
                r#"
                [webhooks.endpoints.ops]
                url = "https://hooks.example.com/tw?token=q-s3cr3t"
                secret = "{a}"
                [webhooks.endpoints.rot]
                url = "https://hooks.example.com/rot"
                secrets = ["{b}"]
                "#
            ),
            &[],
        )
        .expect("valid");
        let shown = format!("{c:?}");
        assert!(shown.contains("hooks.example.com/tw"), "{shown}");
        for hidden in [&a[6..], &b[6..], "q-s3cr3t"] {
            assert!(!shown.contains(hidden), "Debug shows {hidden}: {shown}");
        }
        let shown = format!("{:?}", c.webhook_endpoints().expect("valid"));
        for hidden in [&a[6..], &b[6..], "q-s3cr3t"] {
            assert!(!shown.contains(hidden), "Debug shows {hidden}: {shown}");
        }
    }

    #[test]
    fn file_syntax_errors_do_not_quote_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[auth]\napi_keys = [\"hunter2hunter2\"\n").expect("write");
        let text = load(Some(&path), env(&[])).expect_err("syntax").to_string();
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn redact_quoted_strips_values() {
        assert_eq!(
            redact_quoted("invalid type: string \"abc\", expected u32"),
            "invalid type: string <redacted>, expected u32"
        );
    }

    /// A secret written as a number (or other bare scalar) where a string belongs was shown
    /// in serde's backticks.
    #[test]
    fn redact_quoted_hides_bare_scalars() {
        assert_eq!(
            redact_quoted("invalid type: integer `123456789`, expected a string"),
            "invalid type: integer <redacted>, expected a string"
        );
        assert_eq!(
            redact_quoted("invalid type: floating point `1.5`, expected u32 at line 3"),
            "invalid type: floating point <redacted>, expected u32 at line 3"
        );
        assert_eq!(
            redact_quoted("invalid type: boolean `true`, expected a string"),
            "invalid type: boolean <redacted>, expected a string"
        );
        assert_eq!(
            redact_quoted("invalid type: character `\u{60}`, expected a string"),
            "invalid type: character <redacted>, expected a string"
        );
        assert_eq!(
            redact_quoted("invalid type: character ```, expected a string"),
            "invalid type: character <redacted>, expected a string"
        );
        assert_eq!(
            redact_quoted("unknown field `client_secrett`, expected one of `client_secret`"),
            "unknown field `client_secrett`, expected one of `client_secret`",
            "key names stay"
        );
    }

    /// A backtick inside an unknown variant ended the redaction early and echoed the rest of
    /// the value; a message with a prefix was not redacted at all.
    #[test]
    fn redact_quoted_hides_whole_unknown_variants() {
        assert_eq!(
            redact_quoted("unknown variant `ab`cd-secret`, expected `active` or `needs_reconnect`"),
            "unknown variant <redacted>, expected `active` or `needs_reconnect`"
        );
        let out = redact_quoted(
            "providers.x.kind: unknown variant `s3cret`, expected one of `oauth2`, `tiktok`",
        );
        assert_eq!(
            out,
            "providers.x.kind: unknown variant <redacted>, expected one of `oauth2`, `tiktok`"
        );
        let out = redact_quoted("unknown variant `x`, there are no variants");
        assert_eq!(out, "unknown variant <redacted>, there are no variants");
        // No tail at all: everything after the opening backtick goes.
        assert_eq!(
            redact_quoted("unknown variant `half-a-secret"),
            "unknown variant <redacted>"
        );
    }

    /// Found by the `api_requests` fuzz target: an escaped quote inside the value ended the
    /// redaction early and the rest of the value was echoed.
    #[test]
    fn fuzz_redact_quoted_escaped_quote() {
        let value = "tok\"en-secret\\";
        let message = format!("invalid type: string {value:?}, expected u64");
        let out = redact_quoted(&message);
        assert_eq!(out, "invalid type: string <redacted>, expected u64");
        assert!(!out.contains("secret"), "{out}");
    }
}
