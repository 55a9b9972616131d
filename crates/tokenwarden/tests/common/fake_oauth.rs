//! A stateful fake OAuth 2.0 token endpoint (on wiremock, 127.0.0.1) that rotates refresh
//! tokens and detects reuse like RFC 9700 asks: presenting an already-used refresh token
//! revokes the whole token family.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

#[derive(Debug, Default)]
pub struct State {
    pub generation: u64,
    pub current: String,
    pub used: HashSet<String>,
    pub revoked: bool,
    pub calls: u64,
    pub reuse_detected: u64,
}

/// The fake authorization server's token endpoint.
#[derive(Clone)]
pub struct RotatingServer {
    pub state: Arc<Mutex<State>>,
    pub latency: Duration,
    pub expires_in: u64,
}

impl RotatingServer {
    pub fn new(initial_refresh_token: &str) -> Self {
        let state = State {
            current: initial_refresh_token.to_owned(),
            ..State::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            latency: Duration::ZERO,
            expires_in: 3600,
        }
    }

    pub async fn mount(&self, server: &MockServer) {
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(self.clone())
            .mount(server)
            .await;
    }

    pub fn calls(&self) -> u64 {
        self.state.lock().expect("lock").calls
    }
}

pub fn form_value(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl Respond for RotatingServer {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let presented = form_value(&request.body, "refresh_token").unwrap_or_default();
        let mut state = self.state.lock().expect("lock");
        state.calls += 1;
        let invalid = || {
            ResponseTemplate::new(400)
                .set_body_json(serde_json::json!({"error": "invalid_grant", "error_description": "refresh token is invalid"}))
                .set_delay(self.latency)
        };
        if state.revoked {
            return invalid();
        }
        if presented != state.current {
            if state.used.contains(&presented) {
                // Reuse of a rotated token: revoke the family.
                state.revoked = true;
                state.reuse_detected += 1;
            }
            return invalid();
        }
        state.generation += 1;
        let next = format!("rt-gen-{}", state.generation);
        let old = std::mem::replace(&mut state.current, next);
        state.used.insert(old);
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({
                "access_token": format!("at-gen-{}", state.generation),
                "refresh_token": state.current,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
            }))
            .set_delay(self.latency)
    }
}
