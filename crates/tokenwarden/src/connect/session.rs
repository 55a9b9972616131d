//! A connect session as the store keeps it, and the answers of the store's atomic steps.
//!
//! A session moves `pending` (created by the application) → `opened` (its single-use link
//! was opened by a browser, which got the flow's `state` and cookie) → `exchanging` (the
//! callback claimed the state: nothing else can use it again) → `completed` or `failed`. A
//! `pending` or `opened` session past its `expires_at` is `expired`. Every step is one
//! conditional write, so two browsers, two callbacks or two instances never both win.
//!
//! Secrets: the link's token and the `state` are kept only as SHA-256 hashes; the PKCE
//! verifier and the OpenID nonce ([`FlowSecrets`]) are sealed by the store's key ring and
//! erased when the session finishes.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::connection::{AccountId, ConnectionKey, ProviderName, UserId};

/// How long past its expiry a session may still be exchanging its code before it counts as
/// expired (its instance died mid-exchange).
pub const EXCHANGE_GRACE: time::Duration = time::Duration::minutes(5);

/// A connect session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSession {
    /// `cs_` and 22 URL-safe characters (128 random bits). Not a secret: it names the
    /// session to the application and appears on the return URL.
    pub id: String,
    pub user_id: UserId,
    pub provider: ProviderName,
    /// The account the application named: the connection to create, or to reconnect.
    pub account_id: Option<AccountId>,
    /// True when `account_id` named an existing connection at creation.
    pub reconnect: bool,
    /// Where the browser goes at the end (one of `[connect] return_urls`, query aside).
    pub return_url: String,
    /// Scopes to ask for; empty means the provider's configured scopes.
    pub scopes: Vec<String>,
    pub state: SessionState,
    /// Why the session failed (or expired).
    pub error: Option<SessionError>,
    /// The connection's account id once completed.
    pub connected_account_id: Option<AccountId>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub opened_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
}

impl ConnectSession {
    /// The state as the application sees it at `now`: `pending` until it finishes, or
    /// `expired` once an unfinished session is past its `expires_at`.
    pub fn public_status(&self, now: OffsetDateTime) -> PublicStatus {
        match self.state {
            SessionState::Completed => PublicStatus::Completed,
            SessionState::Failed => PublicStatus::Failed,
            SessionState::Expired => PublicStatus::Expired,
            SessionState::Pending | SessionState::Opened if now >= self.expires_at => {
                PublicStatus::Expired
            }
            // A callback whose instance died mid-exchange never finishes the session; once
            // no exchange can still be running (HTTP timeouts are far shorter), say so.
            SessionState::Exchanging if now >= self.expires_at + EXCHANGE_GRACE => {
                PublicStatus::Expired
            }
            SessionState::Pending | SessionState::Opened | SessionState::Exchanging => {
                PublicStatus::Pending
            }
        }
    }

    /// The key the session's sealed secrets are bound to (the session id in the account
    /// position: a ciphertext moved to another session does not open).
    pub fn seal_key(&self) -> Result<ConnectionKey, crate::connection::IdError> {
        Ok(ConnectionKey::new(
            self.user_id.clone(),
            self.provider.clone(),
            AccountId::parse(self.id.clone())?,
        ))
    }
}

/// Where a session is in its flow (as stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Pending,
    Opened,
    Exchanging,
    Completed,
    Failed,
    Expired,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Opened => "opened",
            Self::Exchanging => "exchanging",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "pending" => Self::Pending,
            "opened" => Self::Opened,
            "exchanging" => Self::Exchanging,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// True once the session can no longer change.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Expired)
    }
}

/// The status the API shows (`GET /v1/connect/sessions/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PublicStatus {
    Pending,
    Completed,
    Failed,
    Expired,
}

impl PublicStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }
}

/// Why a session failed: an error code of the API's table and a message with no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionError {
    pub code: String,
    pub message: String,
}

/// The flow's secrets, sealed at rest. Debug shows only which are present.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct FlowSecrets {
    /// The PKCE `code_verifier` (RFC 7636), when the provider does PKCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_verifier: Option<String>,
    /// The OpenID Connect `nonce`, for providers that return an `id_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl fmt::Debug for FlowSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowSecrets")
            .field(
                "code_verifier",
                &self.code_verifier.as_ref().map(|_| "[REDACTED]"),
            )
            .field("nonce", &self.nonce.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// What opening a connect link writes: the hashes that the callback must match, and the
/// secrets it needs.
#[derive(Debug, Clone)]
pub struct FlowStart {
    /// SHA-256 (hex) of the `state` sent to the provider.
    pub state_hash: String,
    /// SHA-256 (hex) of the cookie value the browser got.
    pub browser_hash: String,
    pub secrets: FlowSecrets,
}

/// The answer of [`Store::open_connect_session`](crate::store::Store::open_connect_session).
#[derive(Debug, Clone)]
pub enum OpenOutcome {
    /// The link was unused and unexpired; the session is now `opened` with the flow given.
    Opened(ConnectSession),
    /// The link was opened before (links are single use); nothing changed.
    AlreadyOpened(ConnectSession),
    /// The session expired before the link was opened; nothing changed.
    Expired(ConnectSession),
    /// No session has this link.
    Unknown,
}

/// The answer of [`Store::claim_connect_callback`](crate::store::Store::claim_connect_callback).
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// The state was the session's, unused, from the browser that opened the link, and the
    /// session had not expired: it is now `exchanging`, and this caller alone has its secrets.
    Claimed(ConnectSession, FlowSecrets),
    /// The state was claimed before (a replayed callback); nothing changed.
    Used(ConnectSession),
    /// The browser's cookie is missing or is not the one that opened the link; nothing
    /// changed (the flow may still finish in the right browser).
    OtherBrowser(ConnectSession),
    /// The session expired; nothing changed.
    Expired(ConnectSession),
    /// No session has this state.
    Unknown,
}

/// How a session ends ([`Store::finish_connect_session`](crate::store::Store::finish_connect_session)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Completed { account_id: AccountId },
    Failed(SessionError),
    Expired(SessionError),
}

impl Finish {
    pub fn state(&self) -> SessionState {
        match self {
            Self::Completed { .. } => SessionState::Completed,
            Self::Failed(_) => SessionState::Failed,
            Self::Expired(_) => SessionState::Expired,
        }
    }

    pub fn error(&self) -> Option<&SessionError> {
        match self {
            Self::Completed { .. } => None,
            Self::Failed(e) | Self::Expired(e) => Some(e),
        }
    }

    pub fn account_id(&self) -> Option<&AccountId> {
        match self {
            Self::Completed { account_id } => Some(account_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(state: SessionState) -> ConnectSession {
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        ConnectSession {
            id: "cs_test".to_owned(),
            user_id: UserId::parse("u").expect("id"),
            provider: ProviderName::parse("p").expect("name"),
            account_id: None,
            reconnect: false,
            return_url: "https://app.example.com/done".to_owned(),
            scopes: Vec::new(),
            state,
            error: None,
            connected_account_id: None,
            created_at: at,
            expires_at: at + time::Duration::minutes(15),
            opened_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn unfinished_sessions_expire_and_a_stuck_exchange_does_too() {
        let s = session(SessionState::Opened);
        let before = s.expires_at - time::Duration::seconds(1);
        assert_eq!(s.public_status(before), PublicStatus::Pending);
        assert_eq!(s.public_status(s.expires_at), PublicStatus::Expired);
        let s = session(SessionState::Exchanging);
        assert_eq!(s.public_status(s.expires_at), PublicStatus::Pending);
        assert_eq!(
            s.public_status(s.expires_at + EXCHANGE_GRACE),
            PublicStatus::Expired
        );
        let s = session(SessionState::Completed);
        assert_eq!(
            s.public_status(s.expires_at + time::Duration::days(1)),
            PublicStatus::Completed
        );
    }
}
