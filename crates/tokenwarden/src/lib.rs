//! tokenwarden: an OAuth token broker.
//!
//! Applications hand tokenwarden their users' OAuth connections once; from then on they ask
//! it for an access token and always get a valid one, or a typed [`Error`] saying why not
//! (for example that the user must reconnect). Refreshes retry transient failures with
//! jittered exponential backoff, honour `Retry-After`, share one upstream call between
//! concurrent callers, and stop calling a provider that is down (circuit breaker). Tokens are
//! encrypted at rest.
//!
//! Embedding it takes a store, a key ring and providers:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tokenwarden::{KeyRing, Warden, provider, store::SqliteStore};
//!
//! let keys = Arc::new(KeyRing::from_base64("k1", [("k1", KeyRing::generate_key_base64().as_str())])?);
//! let store = Arc::new(SqliteStore::connect("sqlite://tokenwarden.db", keys).await?);
//! let config: provider::ProviderConfig = toml::from_str(r#"kind = "reddit"
//!     client_id = "id"
//!     client_secret = "secret"
//!     user_agent = "web:myapp:1.0 (by /u/me)""#)?;
//! let reddit = provider::build("reddit".parse()?, &config, provider::HttpClient::new(Default::default())?)?;
//! let warden = Warden::builder(store).provider(reddit).build()?;
//! let token = warden.get_access_token("user-1", "reddit", "account-9").await?;
//! println!("Authorization: Bearer {}", token.access_token.expose_secret());
//! # Ok(()) }
//! ```

mod app_token;
mod cache;
pub mod clock;
mod commit;
pub mod connect;
pub mod connection;
pub mod crypto;
pub mod error;
pub mod metrics;
pub mod provider;
pub mod proxy;
pub mod refresh;
pub mod scheduler;
pub mod secret;
pub mod store;
mod warden;
pub mod webhooks;

pub use connection::{
    AccountId, Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, LastError,
    ProviderName, Tokens, UserId,
};
pub use crypto::KeyRing;
pub use error::{ConfigError, Error, ErrorCode, ErrorMeta, FailureClass};
pub use refresh::{BreakerConfig, BreakerState, RefreshConfig, RefreshOptions};
pub use scheduler::SchedulerConfig;
pub use secret::{AccessToken, ClientSecret, RefreshToken};
pub use warden::{AccessTokenGrant, ImportRequest, Warden, WardenBuilder, new_instance_id};
