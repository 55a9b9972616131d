//! Test support: a scripted in-process provider, a key ring and connection builders.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokenwarden::connection::ProviderName;
use tokenwarden::provider::{
    FailureKind, NotRefreshable, Provider, ProviderInfo, ProviderKind, RefreshFailure,
    TokenResponse,
};
use tokenwarden::store::MemoryStore;
use tokenwarden::{
    AccessToken, Connection, ConnectionKey, FailureClass, ImportRequest, KeyRing, RefreshToken,
};

pub fn key_ring() -> Arc<KeyRing> {
    let k = KeyRing::generate_key_base64();
    Arc::new(KeyRing::from_base64("k1", [("k1", k.as_str())]).expect("key ring"))
}

pub fn memory_store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(key_ring()))
}

pub fn key(user: &str, account: &str) -> ConnectionKey {
    ConnectionKey::parse(user, "fake", account).expect("key")
}

pub fn import(
    access: &str,
    refresh: Option<&str>,
    expires_at: Option<OffsetDateTime>,
) -> ImportRequest {
    ImportRequest {
        access_token: AccessToken::new(access),
        refresh_token: refresh.map(RefreshToken::new),
        expires_at,
        refresh_expires_at: None,
        issued_at: None,
        token_type: None,
        scopes: vec!["read".into(), "write".into()],
        metadata: serde_json::json!({"handle": "@someone"}),
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// Success: a new access token, a rotated refresh token (if any), lifetime.
    Ok {
        access: String,
        refresh: Option<String>,
        expires_in: Option<u64>,
    },
    Fail(RefreshFailure),
}

pub fn ok(access: &str, refresh: Option<&str>, expires_in: u64) -> Step {
    Step::Ok {
        access: access.into(),
        refresh: refresh.map(Into::into),
        expires_in: Some(expires_in),
    }
}

pub fn transient() -> Step {
    Step::Fail(RefreshFailure::transport("connection refused", false))
}

pub fn rejected(class: FailureClass, error: &str, status: u16) -> Step {
    Step::Fail(RefreshFailure::new(
        class,
        FailureKind::Rejected {
            status,
            error: error.into(),
            description: None,
        },
    ))
}

/// A provider that answers from a script (the last step repeats) and records its calls.
#[derive(Debug)]
pub struct FakeProvider {
    name: ProviderName,
    script: Mutex<VecDeque<Step>>,
    pub calls: AtomicU32,
    /// The refresh token presented on each call.
    pub presented: Mutex<Vec<Option<String>>>,
    /// Simulated network latency per call.
    pub latency: Mutex<Duration>,
    /// When each call started (tokio time).
    pub call_times: Mutex<Vec<tokio::time::Instant>>,
    /// Reported as the provider's `rate_limit_per_second`.
    pub rate_limit: Mutex<Option<u32>>,
}

impl FakeProvider {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Arc<Self> {
        Arc::new(Self {
            name: ProviderName::parse("fake").expect("name"),
            script: Mutex::new(steps.into_iter().collect()),
            calls: AtomicU32::new(0),
            presented: Mutex::new(Vec::new()),
            latency: Mutex::new(Duration::ZERO),
            call_times: Mutex::new(Vec::new()),
            rate_limit: Mutex::new(None),
        })
    }

    /// Replaces the remaining script.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        *self.script.lock().expect("lock") = steps.into_iter().collect();
    }

    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            rate_limit_per_second: *self.rate_limit.lock().expect("lock"),
            ..ProviderInfo::basic("fake", ProviderKind::Oauth2, "http://127.0.0.1/token")
        }
    }

    fn check_refreshable(
        &self,
        conn: &Connection,
        _now: OffsetDateTime,
    ) -> Result<(), NotRefreshable> {
        if conn.tokens.refresh_token.is_none() {
            return Err(NotRefreshable::NoRefreshToken);
        }
        Ok(())
    }

    async fn refresh(&self, conn: &Connection) -> Result<TokenResponse, RefreshFailure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.call_times
            .lock()
            .expect("lock")
            .push(tokio::time::Instant::now());
        self.presented.lock().expect("lock").push(
            conn.tokens
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
        );
        let latency = *self.latency.lock().expect("lock");
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let step = {
            let mut script = self.script.lock().expect("lock");
            if script.len() > 1 {
                script.pop_front()
            } else {
                script.front().cloned()
            }
        };
        match step.expect("script not empty") {
            Step::Ok {
                access,
                refresh,
                expires_in,
            } => Ok(TokenResponse {
                access_token: AccessToken::new(access),
                refresh_token: refresh.map(RefreshToken::new),
                token_type: Some("Bearer".into()),
                expires_in: expires_in.map(Duration::from_secs),
                refresh_expires_in: None,
                scopes: None,
            }),
            Step::Fail(f) => Err(f),
        }
    }
}
