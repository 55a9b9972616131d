//! The connect flow: obtaining a connection with the authorization-code grant and PKCE.
//!
//! 1. The application creates a session ([`Connector::create_session`]) and gets a
//!    single-use link (`{public_url}/connect/{token}`; only the token's hash is stored).
//! 2. The user's browser opens it ([`Connector::open`]): the session becomes `opened`, and
//!    the browser is sent to the provider with a fresh `state`, the PKCE challenge and, for
//!    OpenID providers, a `nonce`, plus a cookie that ties the flow to this browser.
//! 3. The provider sends the browser back ([`Connector::callback`]): the state is claimed
//!    once (known, unused, unexpired, same browser), `iss` is checked (RFC 9207), the code
//!    is exchanged with the verifier, an `id_token` is validated, the account id is found,
//!    and the connection is stored as an import stores it. The browser goes back to the
//!    application's return URL with `session_id` and `status`.
//!
//! Nothing here knows HTTP servers: answers are [`BrowserAnswer`]s the server turns into
//! redirects, cookies and small pages. No code, state, verifier, nonce or token reaches an
//! answer's message, a log line or a `Debug` print.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use url::Url;

use crate::connection::{AccountId, ConnectionKey, ProviderName, UserId};
use crate::error::{Error, ErrorCode};
use crate::provider::catalog::{AccountIdSource, Engine};
use crate::provider::{Grant, HttpClient, ProviderSettings};
use crate::secret::{AccessToken, RefreshToken};
use crate::store::{PutOutcome, StoreError};
use crate::warden::{ImportRequest, Warden};

mod authorize;
mod exchange;
mod id_token;
mod secrets;
pub mod session;

pub use secrets::cookie_name;
use session::{ClaimOutcome, Finish, FlowSecrets, FlowStart, OpenOutcome};
pub use session::{ConnectSession, PublicStatus, SessionError, SessionState};

/// Metric: connect sessions by provider and outcome (`created`, `completed`, or the error
/// code in lower case, such as `access_denied`).
pub const CONNECT_SESSIONS_TOTAL: &str = "tokenwarden_connect_sessions_total";

/// Sessions that expired this long ago are deleted (their record is kept a while so the
/// application can still read how they ended).
const KEEP_FINISHED: Duration = Duration::from_secs(7 * 86_400);
/// Most scopes a session may ask for.
pub const MAX_SCOPES: usize = 100;
/// How often session creation also purges old sessions.
const PURGE_EVERY_SECONDS: i64 = 600;

/// The connect flow's settings (`public_url` and the `[connect]` section).
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// Where browsers reach tokenwarden; the redirect URI is `{public_url}/connect/callback`.
    pub public_url: Url,
    /// How long a session (and its link) lives.
    pub session_ttl: Duration,
    /// The return URLs a session may name (compared without their query).
    pub return_urls: Vec<Url>,
}

impl ConnectConfig {
    /// `{public_url}/connect/callback`: each provider's registered redirect URI.
    pub fn callback_url(&self) -> String {
        format!(
            "{}/connect/callback",
            self.public_url.as_str().trim_end_matches('/')
        )
    }

    fn link(&self, token: &str) -> String {
        format!(
            "{}/connect/{token}",
            self.public_url.as_str().trim_end_matches('/')
        )
    }

    /// Whether cookies must be `Secure` (the public URL is https).
    pub fn secure_cookies(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// The listed return URL `candidate` matches: same scheme, host, port and path; its
    /// query is the application's own; no fragment, no user info.
    fn allows(&self, candidate: &Url) -> bool {
        if candidate.fragment().is_some() || !candidate.username().is_empty() {
            return false;
        }
        self.return_urls.iter().any(|allowed| {
            allowed.scheme() == candidate.scheme()
                && allowed.host_str() == candidate.host_str()
                && allowed.port_or_known_default() == candidate.port_or_known_default()
                && allowed.path() == candidate.path()
        })
    }
}

/// What the application asks for (`POST /v1/connect/sessions`).
#[derive(Debug, Clone)]
pub struct NewSession {
    pub user_id: UserId,
    pub provider: ProviderName,
    pub account_id: Option<AccountId>,
    pub return_url: String,
    /// Scopes to ask for instead of the provider's configured ones.
    pub scopes: Option<Vec<String>>,
}

/// A created session and its link.
pub struct CreatedSession {
    pub session: ConnectSession,
    /// `{public_url}/connect/{token}`: the only place the token ever appears.
    pub connect_url: String,
}

impl fmt::Debug for CreatedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedSession")
            .field("session", &self.session)
            .field("connect_url", &"[REDACTED]")
            .finish()
    }
}

/// The cookie that ties a flow to the browser that opened its link.
#[derive(Clone)]
pub struct FlowCookie {
    pub name: String,
    pub value: String,
    pub max_age: Duration,
    pub secure: bool,
}

impl fmt::Debug for FlowCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowCookie")
            .field("name", &self.name)
            .field("value", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// What to answer a browser.
pub enum BrowserAnswer {
    /// 302 to the provider, setting the flow cookie.
    ToProvider { location: Url, cookie: FlowCookie },
    /// 302 to the application's return URL (with `session_id` and `status`), clearing the
    /// flow cookie when there is one.
    ToApp {
        location: Url,
        clear_cookie: Option<String>,
        session_id: String,
    },
    /// A small page saying what went wrong (the error's code picks the HTTP status).
    Page(Error),
}

impl fmt::Debug for BrowserAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The provider URL carries the state and the challenge.
            Self::ToProvider { cookie, .. } => f
                .debug_struct("ToProvider")
                .field("cookie", cookie)
                .finish_non_exhaustive(),
            Self::ToApp {
                location,
                session_id,
                ..
            } => f
                .debug_struct("ToApp")
                .field("location", &location.as_str())
                .field("session_id", session_id)
                .finish_non_exhaustive(),
            Self::Page(e) => f.debug_tuple("Page").field(e).finish(),
        }
    }
}

/// The callback's query parameters.
#[derive(Default, Clone)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub iss: Option<String>,
}

impl fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| v.as_ref().map(|_| "[REDACTED]");
        f.debug_struct("CallbackParams")
            .field("state", &shown(&self.state))
            .field("code", &shown(&self.code))
            .field("error", &self.error)
            .field("iss", &self.iss)
            .finish()
    }
}

/// Runs connect sessions over a [`Warden`] (its store, providers and clock).
#[derive(Debug, Clone)]
pub struct Connector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    warden: Warden,
    config: ConnectConfig,
    jwks: id_token::JwksCache,
    last_purge: AtomicI64,
}

impl Connector {
    pub fn new(warden: Warden, config: ConnectConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                warden,
                config,
                jwks: id_token::JwksCache::default(),
                last_purge: AtomicI64::new(0),
            }),
        }
    }

    pub fn config(&self) -> &ConnectConfig {
        &self.inner.config
    }

    /// Creates a session. Refuses (400, naming the field) a return URL that is not listed,
    /// a provider that cannot run the flow, and a session without `account_id` for a
    /// provider whose account id cannot be found.
    pub async fn create_session(&self, request: NewSession) -> Result<CreatedSession, Error> {
        let inner = &self.inner;
        let warden = &inner.warden;
        let Some(provider) = warden.provider(&request.provider) else {
            return Err(Error::new(
                ErrorCode::UnknownProvider,
                format!("provider: {} is not configured", request.provider),
            ));
        };
        let settings = connectable(provider.as_ref()).map_err(invalid)?;
        let return_url = Url::parse(request.return_url.trim())
            .map_err(|_| invalid("return_url: not an absolute URL".to_owned()))?;
        if !inner.config.allows(&return_url) {
            return Err(invalid(
                "return_url: not one of [connect] return_urls (compared without the query)"
                    .to_owned(),
            ));
        }
        let scopes = match request.scopes {
            Some(scopes) if scopes.len() > MAX_SCOPES => {
                return Err(invalid(format!("scopes: at most {MAX_SCOPES}")));
            }
            Some(scopes) => {
                if let Some(bad) = scopes.iter().find(|s| {
                    s.is_empty()
                        || s.chars().count() > 256
                        || s.chars()
                            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
                }) {
                    return Err(invalid(format!(
                        "scopes: {bad:?} is not a scope (1-256 characters, no spaces or commas)"
                    )));
                }
                scopes
            }
            None => Vec::new(),
        };
        if request.account_id.is_none() && settings.account_id.is_none() {
            return Err(invalid(format!(
                "account_id: required: {} does not say which account signed in",
                request.provider
            )));
        }
        let reconnect = match &request.account_id {
            Some(account) => {
                let key = ConnectionKey::new(
                    request.user_id.clone(),
                    request.provider.clone(),
                    account.clone(),
                );
                match warden.store().get(&key).await {
                    Ok(found) => found.is_some(),
                    // A row whose secrets do not open still exists: a reconnect fixes it.
                    Err(StoreError::Decrypt) => true,
                    Err(e) => return Err(store_error(e)),
                }
            }
            None => false,
        };
        let now = warden.now();
        let ttl = time::Duration::try_from(inner.config.session_ttl)
            .unwrap_or(time::Duration::seconds(900));
        let session = ConnectSession {
            id: secrets::session_id(),
            user_id: request.user_id,
            provider: request.provider,
            account_id: request.account_id,
            reconnect,
            return_url: return_url.to_string(),
            scopes,
            state: SessionState::Pending,
            error: None,
            connected_account_id: None,
            created_at: now,
            expires_at: now + ttl,
            opened_at: None,
            finished_at: None,
        };
        let token = secrets::random_token();
        warden
            .store()
            .insert_connect_session(&session, &secrets::hash(&token))
            .await
            .map_err(store_error)?;
        count(&session.provider, "created");
        tracing::info!(
            session_id = %session.id,
            provider = %session.provider,
            user_id = %session.user_id,
            reconnect,
            "connect session created"
        );
        self.purge_now_and_then(now).await;
        Ok(CreatedSession {
            connect_url: inner.config.link(&token),
            session,
        })
    }

    /// The providers a session may name, each with whether it says which account signed
    /// in (when not, a session must give `account_id`).
    pub fn connectable_providers(&self) -> Vec<(ProviderName, bool)> {
        let warden = &self.inner.warden;
        warden
            .providers()
            .into_iter()
            .filter_map(|info| {
                let name = ProviderName::parse(info.name).ok()?;
                let provider = warden.provider(&name)?;
                let settings = connectable(provider.as_ref()).ok()?;
                Some((name, settings.account_id.is_some()))
            })
            .collect()
    }

    /// A session by id (`CONNECT_SESSION_NOT_FOUND` when there is none).
    pub async fn session(&self, id: &str) -> Result<ConnectSession, Error> {
        if id.len() > 64 {
            return Err(not_found());
        }
        self.inner
            .warden
            .store()
            .connect_session(id)
            .await
            .map_err(store_error)?
            .ok_or_else(not_found)
    }

    /// The time by the warden's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.inner.warden.now()
    }

    /// A browser opened a connect link.
    pub async fn open(&self, token: &str) -> BrowserAnswer {
        let inner = &self.inner;
        if !secrets::plausible_token(token) {
            return BrowserAnswer::Page(link_unknown());
        }
        let state = secrets::random_token();
        let browser = secrets::random_token();
        let now = inner.warden.now();
        // The session (hence its provider) is only known once opened; the secrets are made
        // for every provider and the ones it cannot use are dropped below.
        let flow = FlowStart {
            state_hash: secrets::hash(&state),
            browser_hash: secrets::hash(&browser),
            secrets: FlowSecrets {
                code_verifier: Some(secrets::random_token()),
                nonce: Some(secrets::random_token()),
            },
        };
        let opened = inner
            .warden
            .store()
            .open_connect_session(&secrets::hash(token), now, &flow)
            .await;
        let session = match opened {
            Ok(OpenOutcome::Opened(session)) => session,
            Ok(OpenOutcome::AlreadyOpened(session)) => {
                tracing::warn!(session_id = %session.id, "connect link opened a second time");
                return BrowserAnswer::Page(Error::new(
                    ErrorCode::ConnectSessionExpired,
                    "This connect link was already used. Links work once: ask the \
                     application for a new one.",
                ));
            }
            Ok(OpenOutcome::Expired(session)) => {
                let error = expired_error();
                return self.fail(&session, Finish::Expired(error), None).await;
            }
            Ok(OpenOutcome::Unknown) => return BrowserAnswer::Page(link_unknown()),
            Err(e) => return BrowserAnswer::Page(store_error(e)),
        };
        let Some((settings, http)) = self.client(&session) else {
            let error = session_error(
                ErrorCode::AuthorizationFailed,
                format!("provider {} is no longer configured", session.provider),
            );
            return self.fail(&session, Finish::Failed(error), None).await;
        };
        let scopes = requested_scopes(settings, &session);
        let verifier = flow
            .secrets
            .code_verifier
            .as_deref()
            .filter(|_| authorize::uses_pkce(settings));
        let nonce = flow
            .secrets
            .nonce
            .as_deref()
            .filter(|_| authorize::is_openid(&scopes));
        let params = authorize::parameters(
            settings,
            &inner.config.callback_url(),
            &scopes,
            &state,
            verifier,
            nonce,
        );
        let Some(authorization_url) = &settings.authorization_url else {
            let error = session_error(
                ErrorCode::AuthorizationFailed,
                format!("provider {} has no authorization_url", session.provider),
            );
            return self.fail(&session, Finish::Failed(error), None).await;
        };
        let location = match authorize::par_endpoint(settings) {
            Some(par) => {
                match authorize::pushed(settings, http, authorization_url, &par, &params).await {
                    Ok(url) => url,
                    Err(message) => {
                        let error = session_error(ErrorCode::AuthorizationFailed, message);
                        return self.fail(&session, Finish::Failed(error), None).await;
                    }
                }
            }
            None => authorize::url(authorization_url, &params),
        };
        tracing::info!(
            session_id = %session.id,
            provider = %session.provider,
            pkce = verifier.is_some(),
            openid = nonce.is_some(),
            "connect link opened: browser sent to the provider"
        );
        BrowserAnswer::ToProvider {
            location,
            cookie: FlowCookie {
                name: cookie_name(&state),
                value: browser,
                max_age: inner.config.session_ttl,
                secure: inner.config.secure_cookies(),
            },
        }
    }

    /// The provider sent the browser back. `cookie` is the value of the cookie named
    /// [`cookie_name`] of the callback's `state`, if the browser sent one.
    pub async fn callback(&self, params: CallbackParams, cookie: Option<&str>) -> BrowserAnswer {
        let inner = &self.inner;
        let Some(state) = params
            .state
            .as_deref()
            .filter(|s| secrets::plausible_token(s))
        else {
            return BrowserAnswer::Page(state_invalid(
                "The sign-in answer has no valid state. Start again from the application.",
            ));
        };
        let cookie_name = cookie_name(state);
        let browser_hash = cookie.map(secrets::hash);
        let now = inner.warden.now();
        let claimed = inner
            .warden
            .store()
            .claim_connect_callback(&secrets::hash(state), browser_hash.as_deref(), now)
            .await;
        let (session, flow) = match claimed {
            Ok(ClaimOutcome::Claimed(session, flow)) => (session, flow),
            Ok(ClaimOutcome::Used(session)) => {
                tracing::warn!(session_id = %session.id, "connect callback replayed");
                return BrowserAnswer::Page(state_invalid(
                    "This sign-in answer was already used. Start again from the application.",
                ));
            }
            Ok(ClaimOutcome::OtherBrowser(session)) => {
                tracing::warn!(
                    session_id = %session.id,
                    cookie = cookie.is_some(),
                    "connect callback from a browser that did not open the link"
                );
                return BrowserAnswer::Page(state_invalid(
                    "This sign-in was started in another browser (or its cookie is gone). \
                     Open the connect link again in this browser.",
                ));
            }
            Ok(ClaimOutcome::Expired(session)) => {
                return self
                    .fail(
                        &session,
                        Finish::Expired(expired_error()),
                        Some(cookie_name),
                    )
                    .await;
            }
            Ok(ClaimOutcome::Unknown) => {
                return BrowserAnswer::Page(state_invalid(
                    "This sign-in answer is not one tokenwarden started. Start again from \
                     the application.",
                ));
            }
            Err(e) => return BrowserAnswer::Page(store_error(e)),
        };
        match self.complete(&session, &flow, &params).await {
            Ok(account_id) => {
                let finish = Finish::Completed {
                    account_id: account_id.clone(),
                };
                if let Err(e) = inner
                    .warden
                    .store()
                    .finish_connect_session(&session.id, &finish, inner.warden.now())
                    .await
                {
                    tracing::error!(session_id = %session.id, error = %e, "connect session could not be marked completed");
                }
                count(&session.provider, "completed");
                tracing::info!(
                    session_id = %session.id,
                    provider = %session.provider,
                    user_id = %session.user_id,
                    account_id = %account_id,
                    reconnect = session.reconnect,
                    "connect session completed"
                );
                BrowserAnswer::ToApp {
                    location: return_location(&session, None),
                    clear_cookie: Some(cookie_name),
                    session_id: session.id.clone(),
                }
            }
            Err(error) => {
                self.fail(&session, Finish::Failed(error), Some(cookie_name))
                    .await
            }
        }
    }

    /// Everything after the state was claimed. The error is what the session records.
    async fn complete(
        &self,
        session: &ConnectSession,
        flow: &FlowSecrets,
        params: &CallbackParams,
    ) -> Result<AccountId, SessionError> {
        let inner = &self.inner;
        let Some((settings, http)) = self.client(session) else {
            return Err(session_error(
                ErrorCode::AuthorizationFailed,
                format!("provider {} is no longer configured", session.provider),
            ));
        };
        check_issuer(settings, params.iss.as_deref())?;
        if let Some(error) = params.error.as_deref() {
            let shown = public_error_value(error);
            return Err(if error == "access_denied" {
                session_error(
                    ErrorCode::AccessDenied,
                    "the user declined at the provider".to_owned(),
                )
            } else {
                session_error(
                    ErrorCode::AuthorizationFailed,
                    format!("the provider answered the authorization request with {shown}"),
                )
            });
        }
        let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
            return Err(session_error(
                ErrorCode::AuthorizationFailed,
                "the provider sent neither a code nor an error".to_owned(),
            ));
        };
        let verifier = flow
            .code_verifier
            .as_deref()
            .filter(|_| authorize::uses_pkce(settings));
        let granted =
            exchange::exchange_code(settings, http, code, &inner.config.callback_url(), verifier)
                .await
                .map_err(|f| {
                    session_error(
                        ErrorCode::CodeExchangeFailed,
                        format!("the code exchange failed: {f}"),
                    )
                })?;
        let scopes = requested_scopes(settings, session);
        let now = inner.warden.now();
        // An id_token is checked whenever one comes back to an OpenID request (which every
        // provider whose account id is an ID token claim makes: see `requested_scopes`).
        let claims = match &granted.id_token {
            Some(raw) if authorize::is_openid(&scopes) => {
                let nonce = flow.nonce.as_deref().unwrap_or_default();
                Some(
                    inner
                        .jwks
                        .verify(settings, http, raw, nonce, now)
                        .await
                        .map_err(|m| session_error(ErrorCode::CodeExchangeFailed, m))?,
                )
            }
            _ => None,
        };
        let mut tokens = granted.tokens;
        if settings.engine == Engine::Instagram {
            tokens =
                exchange::instagram_long_lived(settings, http, tokens.access_token.expose_secret())
                    .await
                    .map_err(|f| {
                        session_error(
                            ErrorCode::CodeExchangeFailed,
                            format!("the exchange for a long-lived token failed: {f}"),
                        )
                    })?;
        }
        // Which account signed in, as the provider says (when it says).
        let provider_account = match &settings.account_id {
            None => None,
            Some(AccountIdSource::IdTokenClaim(claim)) => Some(
                claims
                    .as_ref()
                    .and_then(|c| c.account_claim(claim))
                    .ok_or_else(|| {
                        session_error(
                            ErrorCode::CodeExchangeFailed,
                            format!("the answer has no id_token with a {claim} claim"),
                        )
                    })?,
            ),
            Some(AccountIdSource::TokenField(path)) => {
                Some(exchange::lookup(&granted.fields, path).ok_or_else(|| {
                    session_error(
                        ErrorCode::CodeExchangeFailed,
                        format!("the token answer has no {path}"),
                    )
                })?)
            }
            Some(AccountIdSource::UserInfoField(path)) => {
                let Some(url) = &settings.userinfo_url else {
                    return Err(session_error(
                        ErrorCode::CodeExchangeFailed,
                        format!("providers.{}.userinfo_url is not set", settings.name),
                    ));
                };
                let info =
                    exchange::userinfo(settings, http, url, tokens.access_token.expose_secret())
                        .await
                        .map_err(|m| session_error(ErrorCode::CodeExchangeFailed, m))?;
                Some(exchange::lookup(&info, path).ok_or_else(|| {
                    session_error(
                        ErrorCode::CodeExchangeFailed,
                        format!("the user-info answer has no {path}"),
                    )
                })?)
            }
        };
        let account_id = match (&session.account_id, provider_account) {
            (Some(named), Some(found)) if session.reconnect && named.as_str() != found => {
                return Err(session_error(
                    ErrorCode::AccountMismatch,
                    format!(
                        "the user signed in as another {} account than the one to reconnect",
                        session.provider
                    ),
                ));
            }
            (Some(named), _) => named.clone(),
            (None, Some(found)) => AccountId::parse(found).map_err(|e| {
                session_error(
                    ErrorCode::CodeExchangeFailed,
                    format!("the provider's account id cannot be used: {e}"),
                )
            })?,
            (None, None) => {
                return Err(session_error(
                    ErrorCode::CodeExchangeFailed,
                    "the provider did not say which account signed in".to_owned(),
                ));
            }
        };
        let key = ConnectionKey::new(
            session.user_id.clone(),
            session.provider.clone(),
            account_id.clone(),
        );
        // A reconnect (or a connect of an account the user already has) keeps the
        // connection's metadata; everything else is replaced as an import replaces it.
        let metadata = match inner.warden.store().get(&key).await {
            Ok(Some(existing)) => existing.meta.metadata,
            Ok(None) | Err(StoreError::Decrypt) => serde_json::Value::Null,
            Err(e) => {
                // The session's error is shown to the application: the detail goes to the log.
                tracing::error!(session_id = %session.id, error = %e,
                    "reading the connection to reconnect failed");
                return Err(session_error(
                    ErrorCode::GetTokenError,
                    "the connection store failed".to_owned(),
                ));
            }
        };
        let at = |d: Duration| time::Duration::try_from(d).ok().map(|d| now + d);
        let request = ImportRequest {
            access_token: AccessToken::new(tokens.access_token.expose_secret()),
            refresh_token: tokens
                .refresh_token
                .as_ref()
                .map(|t| RefreshToken::new(t.expose_secret())),
            expires_at: tokens.expires_in.and_then(at),
            refresh_expires_at: tokens.refresh_expires_in.and_then(at),
            issued_at: Some(now),
            token_type: tokens.token_type.clone(),
            scopes: tokens.scopes.clone().unwrap_or(scopes),
            metadata,
        };
        match inner.warden.import(key, request).await {
            Ok((_, PutOutcome::Created | PutOutcome::Replaced)) => Ok(account_id),
            Err(e) => Err(SessionError {
                code: e.code().as_str().to_owned(),
                message: e.message().to_owned(),
            }),
        }
    }

    /// Ends a session as failed (or expired) and sends the browser back to the application.
    async fn fail(
        &self,
        session: &ConnectSession,
        finish: Finish,
        clear_cookie: Option<String>,
    ) -> BrowserAnswer {
        let inner = &self.inner;
        let error = finish.error().cloned().unwrap_or_else(expired_error);
        match inner
            .warden
            .store()
            .finish_connect_session(&session.id, &finish, inner.warden.now())
            .await
        {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(session_id = %session.id, error = %e, "connect session could not be marked failed");
            }
        }
        count(&session.provider, &error.code.to_ascii_lowercase());
        tracing::warn!(
            session_id = %session.id,
            provider = %session.provider,
            code = %error.code,
            message = %error.message,
            "connect session failed"
        );
        BrowserAnswer::ToApp {
            location: return_location(session, Some(&error.code)),
            clear_cookie,
            session_id: session.id.clone(),
        }
    }

    fn client(&self, session: &ConnectSession) -> Option<(&ProviderSettings, &HttpClient)> {
        self.inner
            .warden
            .provider(&session.provider)?
            .connect_client()
    }

    /// Deletes long-expired sessions, at most every ten minutes.
    async fn purge_now_and_then(&self, now: OffsetDateTime) {
        let last = self.inner.last_purge.load(Ordering::Relaxed);
        if now.unix_timestamp() - last < PURGE_EVERY_SECONDS
            || self
                .inner
                .last_purge
                .compare_exchange(
                    last,
                    now.unix_timestamp(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let keep = time::Duration::try_from(KEEP_FINISHED).unwrap_or(time::Duration::days(7));
        match self
            .inner
            .warden
            .store()
            .purge_connect_sessions(now - keep)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old connect sessions deleted"),
            Err(e) => tracing::warn!(error = %e, "old connect sessions could not be deleted"),
        }
    }
}

/// The provider's settings when it can run the connect flow, else why not (naming the
/// `provider` field).
fn connectable(provider: &dyn crate::provider::Provider) -> Result<&ProviderSettings, String> {
    let name = provider.name();
    match provider.connect_client() {
        Some((settings, _)) if settings.grant == Grant::ClientCredentials => Err(format!(
            "provider: {name} uses the client-credentials grant: it has no user connections \
             to connect"
        )),
        Some((settings, _)) if settings.authorization_url.is_none() => Err(format!(
            "provider: {name} has no authorization_url (set providers.{name}.authorization_url)"
        )),
        Some((settings, _)) if settings.client_id.is_none() => Err(format!(
            "provider: {name} has no client_id (set providers.{name}.client_id)"
        )),
        Some((settings, _)) => Ok(settings),
        None => Err(format!("provider: {name} cannot run the connect flow")),
    }
}

/// The scopes a session asks for: its own, else the provider's; plus `openid` when the
/// account id is a claim of the ID token (no `openid`, no ID token).
fn requested_scopes(settings: &ProviderSettings, session: &ConnectSession) -> Vec<String> {
    let mut scopes = if session.scopes.is_empty() {
        settings.scopes.clone()
    } else {
        session.scopes.clone()
    };
    if matches!(settings.account_id, Some(AccountIdSource::IdTokenClaim(_)))
        && !authorize::is_openid(&scopes)
    {
        scopes.insert(0, "openid".to_owned());
    }
    scopes
}

/// RFC 9207: an `iss` sent must be the provider's issuer; a provider whose metadata says it
/// sends one must have sent it.
fn check_issuer(settings: &ProviderSettings, iss: Option<&str>) -> Result<(), SessionError> {
    let expected = settings
        .metadata
        .as_ref()
        .map(|m| m.issuer.clone())
        .or_else(|| settings.oidc_issuer.as_ref().map(|u| u.to_string()));
    let required = settings
        .metadata
        .as_ref()
        .is_some_and(|m| m.authorization_response_iss_parameter_supported);
    match (iss, expected) {
        (Some(iss), Some(expected)) if !same_issuer(iss, &expected) => Err(session_error(
            ErrorCode::IssuerMismatch,
            format!("the authorization answer names another issuer than {expected} (RFC 9207 iss)"),
        )),
        (None, Some(expected)) if required => Err(session_error(
            ErrorCode::IssuerMismatch,
            format!("{expected} sends iss with every authorization answer, but this one had none"),
        )),
        _ => Ok(()),
    }
}

/// Issuers compare as strings (RFC 9207 §2.4), except that a parsed catalog URL may have
/// gained a trailing slash.
fn same_issuer(a: &str, b: &str) -> bool {
    a == b || a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// A provider's `error` value, shown only when it looks like OAuth vocabulary (it arrives in
/// a URL anyone can forge).
fn public_error_value(error: &str) -> String {
    if !error.is_empty()
        && error.len() <= 64
        && error
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        error.to_owned()
    } else {
        "an unrecognised error".to_owned()
    }
}

/// The return URL with `session_id` and `status` (and `error`) added to its own query.
fn return_location(session: &ConnectSession, error: Option<&str>) -> Url {
    let mut url = Url::parse(&session.return_url).unwrap_or_else(|_| {
        // Checked at creation; a stored value always parses.
        Url::parse("about:blank").unwrap_or_else(|_| unreachable!("a constant URL parses"))
    });
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("session_id", &session.id);
        match error {
            None => query.append_pair("status", "completed"),
            Some(code) => query
                .append_pair("status", "failed")
                .append_pair("error", code),
        };
    }
    url
}

fn count(provider: &ProviderName, outcome: &str) {
    metrics::counter!(
        CONNECT_SESSIONS_TOTAL,
        "provider" => provider.to_string(),
        "outcome" => outcome.to_owned()
    )
    .increment(1);
}

fn session_error(code: ErrorCode, message: String) -> SessionError {
    SessionError {
        code: code.as_str().to_owned(),
        message,
    }
}

fn expired_error() -> SessionError {
    session_error(
        ErrorCode::ConnectSessionExpired,
        "the connect session expired before the user finished".to_owned(),
    )
}

fn invalid(message: String) -> Error {
    Error::new(ErrorCode::InvalidRequest, message)
}

fn not_found() -> Error {
    Error::new(ErrorCode::ConnectSessionNotFound, "no such connect session")
}

fn link_unknown() -> Error {
    Error::new(
        ErrorCode::ConnectSessionNotFound,
        "This connect link is not valid. Ask the application for a new one.",
    )
}

fn state_invalid(message: &str) -> Error {
    Error::new(ErrorCode::ConnectStateInvalid, message)
}

/// A database failure, as the token routes report one: a generic message (it reaches
/// pages and API answers), the detail kept as the source for the log.
fn store_error(e: StoreError) -> Error {
    Error::new(ErrorCode::GetTokenError, "the connect session store failed").with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(urls: &[&str]) -> ConnectConfig {
        ConnectConfig {
            public_url: Url::parse("https://tw.example.com/base/").expect("url"),
            session_ttl: Duration::from_secs(900),
            return_urls: urls.iter().map(|u| Url::parse(u).expect("url")).collect(),
        }
    }

    #[test]
    fn return_urls_match_without_query_only() {
        let c = config(&["https://app.example.com/done", "http://127.0.0.1:3000/cb"]);
        let ok = |u: &str| c.allows(&Url::parse(u).expect("url"));
        assert!(ok("https://app.example.com/done"));
        assert!(ok("https://app.example.com/done?tab=1"));
        assert!(ok("https://app.example.com:443/done"));
        assert!(ok("http://127.0.0.1:3000/cb"));
        for bad in [
            "https://app.example.com/done/",
            "https://app.example.com/done#x",
            "https://app.example.com/other",
            "http://app.example.com/done",
            "https://app.example.com.evil.test/done",
            "https://evil.test/done",
            "https://user@app.example.com/done",
            "https://app.example.com:8443/done",
            "http://127.0.0.1:3001/cb",
        ] {
            assert!(!ok(bad), "{bad}");
        }
    }

    #[test]
    fn callback_and_links_sit_under_the_public_url() {
        let c = config(&[]);
        assert_eq!(
            c.callback_url(),
            "https://tw.example.com/base/connect/callback"
        );
        assert_eq!(c.link("abc"), "https://tw.example.com/base/connect/abc");
        assert!(c.secure_cookies());
    }

    #[test]
    fn provider_error_values_are_shown_only_when_plain() {
        assert_eq!(public_error_value("invalid_scope"), "invalid_scope");
        assert_eq!(
            public_error_value("<script>alert(1)</script>"),
            "an unrecognised error"
        );
        assert_eq!(public_error_value(""), "an unrecognised error");
    }

    #[test]
    fn issuers_compare_exactly_but_for_a_trailing_slash() {
        assert!(same_issuer("https://a.example", "https://a.example/"));
        assert!(!same_issuer("https://a.example", "https://b.example"));
        assert!(!same_issuer("https://a.example/x", "https://a.example"));
    }
}
