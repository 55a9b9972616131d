//! Interop against a real, independent authorization server: panva's OpenID-certified
//! `oidc-provider` (see `interop/oidc-provider/server.mjs`), run as a child process on
//! 127.0.0.1. Everything else in the suite talks to fakes we wrote; here the token endpoint,
//! its error answers and its refresh-token rotation with reuse detection are someone else's.
//!
//! The server needs `cd interop/oidc-provider && npm ci` (`scripts/test` runs it). Without
//! it the tests are built as ignored and say why (see `build.rs`); once installed, a test
//! that cannot start the server (no `node`, say) fails.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokenwarden::provider::{self, HttpClient, HttpSettings};
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::SqliteStore;
use tokenwarden::{
    AccessToken, ConnectionKey, ConnectionStatus, ErrorCode, FailureClass, ImportRequest, KeyRing,
    RefreshConfig, RefreshOptions, RefreshToken, Warden,
};
use url::Url;

// Must match the defaults in server.mjs. Test-only values, never real credentials.
const CLIENT_ID: &str = "tokenwarden-interop";
const CLIENT_SECRET: &str = "interop-client-secret-not-for-production";
const REDIRECT_URI: &str = "http://127.0.0.1/callback";
const ACCOUNT: &str = "interop-user-1";
/// server.mjs's second client, allowed only the client_credentials grant.
const APP_CLIENT_ID: &str = "tokenwarden-interop-app";
const APP_CLIENT_SECRET: &str = "interop-app-secret-not-for-production";
/// Access-token lifetime handed to the server: short, so a test sees several expiries, and
/// long enough that a fresh token is not due again at once: `expires_at` is kept in whole
/// seconds, so a token can lose up to a second of its life when stored, and the threshold
/// below takes another. With 2 s tokens a caller started late on a loaded machine found the
/// token just refreshed already due and refreshed it a second time.
const AT_TTL_SECS: u64 = 4;

// ---------------------------------------------------------------------------------------
// The oidc-provider child process

/// A running `server.mjs`; killed when dropped, so a failing test leaves nothing behind.
struct OpServer {
    child: Child,
    issuer: Url,
    /// The server's stderr, kept to print when a test fails.
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for OpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            eprintln!("--- oidc-provider stderr ---\n{}", log.join("\n"));
        }
    }
}

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/oidc-provider")
}

/// Starts the server on a free port. These tests are ignored unless it was installed when
/// they were built (see `build.rs`), so a missing `node` or install here is a failure.
fn start_server() -> OpServer {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules/oidc-provider/package.json")
            .is_file(),
        "oidc-provider is not installed although this test was built for it: \
         run `npm ci` in interop/oidc-provider (scripts/test does)"
    );
    let mut child = Command::new("node")
        .arg("server.mjs")
        .arg("0")
        .current_dir(&dir)
        .env("AT_TTL", AT_TTL_SECS.to_string())
        .env("RT_TTL", "120")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn `node server.mjs` (is Node.js on PATH?)");

    // Keep draining both pipes so the child never blocks on a full one.
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr");
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line);
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        for line in lines.by_ref() {
            if let Some(url) = line.strip_prefix("LISTENING ") {
                let _ = tx.send(url.trim().to_owned());
                break;
            }
        }
        lines.for_each(drop);
    });
    let mut server = OpServer {
        child,
        issuer: Url::parse("http://127.0.0.1/").expect("placeholder"),
        log,
    };
    let issuer = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("server.mjs did not print LISTENING within 20 s");
    server.issuer = Url::parse(&issuer).expect("issuer URL");
    assert_eq!(server.issuer.host_str(), Some("127.0.0.1"));
    server
}

/// The endpoints we use, from the server's discovery document (not guessed paths).
#[derive(Debug, serde::Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    code_challenge_methods_supported: Vec<String>,
}

/// Counters kept by server.mjs.
#[derive(Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Stats {
    refresh_grants: u32,
    client_credentials_grants: u32,
    refresh_errors: u32,
    reuse_detected: u32,
    grants_revoked: u32,
    admin_revocations: u32,
}

/// An HTTP client that does not follow redirects: the test follows them itself to check
/// each hop.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn discover(client: &reqwest::Client, op: &OpServer) -> Discovery {
    let url = op
        .issuer
        .join("/.well-known/openid-configuration")
        .expect("url");
    let d: Discovery = client
        .get(url)
        .send()
        .await
        .expect("discovery")
        .error_for_status()
        .expect("discovery status")
        .json()
        .await
        .expect("discovery json");
    assert_eq!(
        d.issuer.trim_end_matches('/'),
        op.issuer.as_str().trim_end_matches('/')
    );
    d
}

async fn stats(client: &reqwest::Client, op: &OpServer) -> Stats {
    client
        .get(op.issuer.join("/test/stats").expect("url"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json")
}

// ---------------------------------------------------------------------------------------
// Authorization-code flow with PKCE, by hand

/// Tokens from the code exchange.
#[derive(Debug, serde::Deserialize)]
struct CodeTokens {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
    token_type: String,
    scope: String,
}

fn random_b64(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(raw)
}

/// A minimal cookie jar: the flow needs the interaction and session cookies sent back.
/// Later cookies replace earlier ones of the same name (interactions follow each other);
/// cleared cookies are dropped.
#[derive(Default)]
struct Jar(HashMap<String, String>);

impl Jar {
    fn take(&mut self, response: &reqwest::Response) {
        for header in response.headers().get_all(SET_COOKIE) {
            let Ok(header) = header.to_str() else {
                continue;
            };
            let pair = header.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let cleared = value.is_empty() || header.to_ascii_lowercase().contains("1970");
            if cleared {
                self.0.remove(name.trim());
            } else {
                self.0.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Runs the authorization-code flow with PKCE (S256) and `state` the way a browser would,
/// following every redirect by hand, and exchanges the code. Returns the tokens and when
/// they were received.
async fn authorize(client: &reqwest::Client, d: &Discovery) -> (CodeTokens, OffsetDateTime) {
    let verifier = random_b64(32); // 43 characters, RFC 7636 §4.1
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random_b64(16);
    let mut url = Url::parse(&d.authorization_endpoint).expect("auth url");
    url.query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid")
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");

    let mut jar = Jar::default();
    let mut callback = None;
    for _hop in 0..10 {
        let response = client
            .get(url.clone())
            .header(COOKIE, jar.header())
            .send()
            .await
            .expect("authorization hop");
        assert!(
            response.status().is_redirection(),
            "expected a redirect from {}, got {}",
            url.path(),
            response.status()
        );
        jar.take(&response);
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .expect("Location header");
        let next = url.join(location).expect("Location URL");
        if next.as_str().starts_with(REDIRECT_URI) {
            callback = Some(next);
            break;
        }
        url = next;
    }
    let callback = callback.expect("the flow reached the redirect URI within 10 hops");
    let params: HashMap<String, String> = callback.query_pairs().into_owned().collect();
    assert!(
        !params.contains_key("error"),
        "authorization refused: {params:?}"
    );
    assert_eq!(
        params.get("state"),
        Some(&state),
        "state must come back unchanged"
    );
    // RFC 9207: the server says who issued the code (mix-up defence).
    assert_eq!(
        params.get("iss").map(String::as_str),
        Some(d.issuer.as_str())
    );
    let code = params.get("code").expect("code");

    let response = client
        .post(&d.token_endpoint)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .expect("code exchange");
    let received_at = OffsetDateTime::now_utc();
    assert_eq!(response.status(), 200, "code exchange refused");
    let tokens: CodeTokens = response.json().await.expect("token json");
    (tokens, received_at)
}

// ---------------------------------------------------------------------------------------
// The warden under test

struct Env {
    op: OpServer,
    client: reqwest::Client,
    discovery: Discovery,
    warden: Warden,
    key: ConnectionKey,
    _dir: tempfile::TempDir,
}

/// A provider configured with nothing but the issuer and the client's credentials.
fn provider_config(issuer: &Url) -> provider::ProviderConfig {
    toml::from_str(&format!(
        "issuer = \"{issuer}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\
         auth_method = \"client_secret_basic\""
    ))
    .expect("provider config")
}

fn client_http() -> HttpClient {
    HttpClient::new(HttpSettings {
        request_timeout: Duration::from_secs(5),
        ..HttpSettings::default()
    })
    .expect("http client")
}

/// Starts the server, builds a warden over SQLite with a provider configured by `issuer`
/// (discovery fills its endpoints), runs the code flow and imports the result.
async fn setup() -> Env {
    let op = start_server();
    let client = http();
    let discovery = discover(&client, &op).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Arc::new(
        KeyRing::from_base64("k1", [("k1", KeyRing::generate_key_base64().as_str())])
            .expect("keys"),
    );
    let db = format!("sqlite://{}/tw.db", dir.path().display());
    let store = Arc::new(SqliteStore::connect(&db, keys).await.expect("store"));
    // Only the issuer: the endpoints come from the server's own metadata.
    let config = provider_config(&op.issuer);
    let provider =
        provider::build_discovering("oidc".parse().expect("name"), &config, client_http())
            .await
            .expect("provider");
    let info = provider.info();
    assert_eq!(info.source, provider::ProviderSource::Discovery);
    assert_eq!(info.token_url, discovery.token_endpoint);
    assert_eq!(
        info.revoke_url.as_deref(),
        Some(discovery.revocation_endpoint.as_str())
    );
    let warden = Warden::builder(store)
        .provider(provider)
        .refresh_config(RefreshConfig {
            // With 4 s tokens: refresh in the last second.
            threshold: Duration::from_secs(1),
            retry: RetryPolicy {
                max_retries: 2,
                initial_delay: Duration::from_millis(50),
                max_delay: Duration::from_millis(200),
            },
            ..RefreshConfig::default()
        })
        .build()
        .expect("valid warden settings");
    let key = ConnectionKey::parse("app-user-1", "oidc", ACCOUNT).expect("key");

    let (tokens, received_at) = authorize(&client, &discovery).await;
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, AT_TTL_SECS);
    let expires_in = time::Duration::seconds(i64::try_from(tokens.expires_in).expect("ttl"));
    warden
        .import(
            key.clone(),
            ImportRequest {
                access_token: AccessToken::new(tokens.access_token),
                refresh_token: Some(RefreshToken::new(tokens.refresh_token)),
                expires_at: Some(received_at + expires_in),
                refresh_expires_at: None,
                issued_at: Some(received_at),
                token_type: Some(tokens.token_type),
                scopes: tokens.scope.split(' ').map(str::to_owned).collect(),
                metadata: serde_json::json!({"issuer": discovery.issuer}),
            },
        )
        .await
        .expect("import");
    Env {
        op,
        client,
        discovery,
        warden,
        key,
        _dir: dir,
    }
}

impl Env {
    async fn stored(&self) -> (String, String) {
        let conn = self
            .warden
            .store()
            .get(&self.key)
            .await
            .expect("store get")
            .expect("connection exists");
        (
            conn.tokens.access_token.expose_secret().to_owned(),
            conn.tokens
                .refresh_token
                .expect("refresh token")
                .expose_secret()
                .to_owned(),
        )
    }

    /// Sleeps until the stored access token has expired (plus a little), so every caller
    /// must wait for a refresh rather than get the old token.
    async fn wait_for_expiry(&self) {
        let meta = self.warden.connection(&self.key).await.expect("meta");
        let at = meta.expires_at.expect("expires_at");
        let wait = at - OffsetDateTime::now_utc() + time::Duration::milliseconds(50);
        if let Ok(wait) = Duration::try_from(wait) {
            tokio::time::sleep(wait).await;
        }
    }

    async fn introspect(&self, token: &str) -> serde_json::Value {
        self.client
            .post(&self.discovery.introspection_endpoint)
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection")
            .json()
            .await
            .expect("introspection json")
    }

    async fn stats(&self) -> Stats {
        stats(&self.client, &self.op).await
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_interop), ignore = "needs npm ci in interop/oidc-provider")]
async fn code_flow_with_pkce_imports_a_working_connection() {
    let env = setup().await;
    assert!(
        env.discovery
            .code_challenge_methods_supported
            .iter()
            .any(|m| m == "S256")
    );

    // PKCE really is required: the same request without a challenge is refused.
    let mut url = Url::parse(&env.discovery.authorization_endpoint).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid")
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("state", "s");
    let refused = env.client.get(url).send().await.expect("auth");
    let location = refused
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        location.starts_with(REDIRECT_URI) && location.contains("error=invalid_request"),
        "an authorization request without PKCE must be refused, got {location:?}"
    );

    // The imported token is served as is while fresh, and the server vouches for it.
    let meta = env.warden.connection(&env.key).await.expect("meta");
    assert_eq!(meta.status, ConnectionStatus::Active);
    assert!(meta.has_refresh_token);
    assert_eq!(meta.scopes, vec!["openid".to_owned()]);
    let grant = env.warden.access_token(&env.key).await.expect("token");
    assert_eq!(grant.access_token.expose_secret(), env.stored().await.0);
    let info = env.introspect(grant.access_token.expose_secret()).await;
    assert_eq!(info["active"], true, "introspection: {info}");
    assert_eq!(info["client_id"], CLIENT_ID);
    assert_eq!(info["sub"], ACCOUNT);

    // After expiry the warden refreshes at the real server, and that token is active too.
    env.wait_for_expiry().await;
    let fresh = env.warden.access_token(&env.key).await.expect("refreshed");
    assert_ne!(
        fresh.access_token.expose_secret(),
        grant.access_token.expose_secret()
    );
    let info = env.introspect(fresh.access_token.expose_secret()).await;
    assert_eq!(info["active"], true);
    assert_eq!(env.stats().await.refresh_grants, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_interop), ignore = "needs npm ci in interop/oidc-provider")]
async fn concurrent_callers_share_one_refresh_per_expiry_with_rotation() {
    let env = setup().await;
    const ROUNDS: u32 = 4;
    const CALLERS: usize = 50;
    let started = std::time::Instant::now();
    let (mut access, first_refresh) = env.stored().await;
    let mut seen_refresh_tokens = HashSet::from([first_refresh]);

    for round in 1..=ROUNDS {
        env.wait_for_expiry().await;
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let warden = env.warden.clone();
                let key = env.key.clone();
                tokio::spawn(async move { warden.access_token(&key).await })
            })
            .collect();
        let mut tokens = HashSet::new();
        for caller in futures::future::join_all(callers).await {
            let grant = caller.expect("task").unwrap_or_else(|e| {
                panic!(
                    "round {round}: access_token failed: {} {}",
                    e.code(),
                    e.message()
                )
            });
            tokens.insert(grant.access_token.expose_secret().to_owned());
        }
        assert_eq!(
            tokens.len(),
            1,
            "round {round}: callers got different tokens"
        );
        let (stored_access, stored_refresh) = env.stored().await;
        assert!(
            tokens.contains(&stored_access),
            "round {round}: served token is the stored one"
        );
        assert_ne!(
            stored_access, access,
            "round {round}: the token was refreshed"
        );
        assert!(
            seen_refresh_tokens.insert(stored_refresh),
            "round {round}: the refresh token must rotate"
        );
        access = stored_access;

        // Exactly one refresh per round reached the server, and never a reused token (which
        // oidc-provider would have punished by revoking the grant).
        let s = env.stats().await;
        assert_eq!(s.refresh_grants, round, "round {round}: {s:?}");
        assert_eq!(
            (s.refresh_errors, s.reuse_detected),
            (0, 0),
            "round {round}: {s:?}"
        );
    }
    let meta = env.warden.connection(&env.key).await.expect("meta");
    assert_eq!(meta.status, ConnectionStatus::Active);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_interop), ignore = "needs npm ci in interop/oidc-provider")]
async fn grant_revoked_at_the_server_needs_reconnect() {
    let env = setup().await;
    let served = env.warden.access_token(&env.key).await.expect("token");

    let revoked: serde_json::Value = env
        .client
        .post(
            env.op
                .issuer
                .join(&format!("/test/revoke-grant?account={ACCOUNT}"))
                .expect("url"),
        )
        .send()
        .await
        .expect("revoke")
        .json()
        .await
        .expect("revoke json");
    assert_eq!(revoked["revoked"], 1);
    // The server has killed the access token too; the warden cannot know that until the
    // next refresh.
    let info = env.introspect(served.access_token.expose_secret()).await;
    assert_eq!(info["active"], false);

    env.wait_for_expiry().await;
    let err = env
        .warden
        .access_token(&env.key)
        .await
        .expect_err("refresh of a revoked grant must fail");
    assert_eq!(err.code(), ErrorCode::TokenExpired, "{err:?}");
    assert!(err.reconnect());
    assert_eq!(err.meta().failure, Some(FailureClass::Permanent));
    assert_eq!(err.meta().provider_error.as_deref(), Some("invalid_grant"));

    let meta = env.warden.connection(&env.key).await.expect("still there");
    assert_eq!(meta.status, ConnectionStatus::NeedsReconnect);
    assert!(
        env.warden
            .store()
            .get(&env.key)
            .await
            .expect("get")
            .is_some()
    );

    // A needs_reconnect connection is not refreshed again: one failed call upstream only.
    let again = env
        .warden
        .access_token(&env.key)
        .await
        .expect_err("still revoked");
    assert_eq!(again.code(), ErrorCode::TokenExpired);
    assert!(again.reconnect());
    let s = env.stats().await;
    assert_eq!((s.refresh_grants, s.refresh_errors), (0, 1), "{s:?}");
}

/// Documents what oidc-provider does when a rotated refresh token is replayed (what a
/// double refresh would look like from the server): `invalid_grant`, and the whole grant,
/// including the current refresh token the warden holds, is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_interop), ignore = "needs npm ci in interop/oidc-provider")]
async fn replayed_refresh_token_revokes_the_grant() {
    let env = setup().await;
    let (_, original) = env.stored().await;
    env.warden
        .refresh_token(&env.key, RefreshOptions::default())
        .await
        .expect("forced refresh");
    let (_, rotated) = env.stored().await;
    assert_ne!(rotated, original);

    // Someone replays the old refresh token.
    let replay = env
        .client
        .post(&env.discovery.token_endpoint)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", original.as_str()),
        ])
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), 400);
    let body: serde_json::Value = replay.json().await.expect("json");
    assert_eq!(body["error"], "invalid_grant");
    let s = env.stats().await;
    assert_eq!((s.reuse_detected, s.grants_revoked), (1, 1), "{s:?}");

    // The warden's current token dies with the grant: permanent, reconnect, nothing deleted.
    let err = env
        .warden
        .refresh_token(&env.key, RefreshOptions::default())
        .await
        .expect_err("grant is gone");
    assert_eq!(err.code(), ErrorCode::TokenRefreshError);
    assert!(err.reconnect());
    let meta = env.warden.connection(&env.key).await.expect("still there");
    assert_eq!(meta.status, ConnectionStatus::NeedsReconnect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_interop), ignore = "needs npm ci in interop/oidc-provider")]
async fn discovery_reads_the_real_servers_metadata_and_refuses_what_does_not_match() {
    let op = start_server();
    let http = client_http();
    let issuer = op.issuer.as_str().trim_end_matches('/');
    let meta = provider::discovery::discover(&http, issuer)
        .await
        .expect("discovery");
    assert_eq!(
        meta.document_url,
        format!("{issuer}/.well-known/openid-configuration")
    );
    assert_eq!(meta.token_endpoint, format!("{issuer}/token"));
    assert!(meta.supports_s256(), "{meta:?}");
    assert!(meta.jwks_uri.is_some());
    assert!(meta.authorization_endpoint.is_some());
    assert!(meta.revocation_endpoint.is_some());
    // Kept for the connect flow.
    assert!(meta.authorization_response_iss_parameter_supported);
    assert!(!meta.require_pushed_authorization_requests);

    // An issuer with no metadata: both well-known URLs are named.
    let err = provider::discovery::discover(&http, &format!("{issuer}/nope"))
        .await
        .expect_err("no metadata");
    assert!(
        err.url.contains("/nope/.well-known/openid-configuration"),
        "{err}"
    );
    assert!(
        err.url
            .contains("/.well-known/oauth-authorization-server/nope"),
        "{err}"
    );

    // The same server under another name: its document names another issuer (a mix-up
    // attempt, as far as we can tell), so it is refused.
    let other_name = issuer.replace("127.0.0.1", "localhost");
    let err = provider::discovery::discover(&http, &other_name)
        .await
        .expect_err("issuer mismatch");
    assert!(err.problem.contains("not the configured"), "{err}");

    // Explicit keys win over discovered ones, and a failing discovery stops the build with
    // the key and the URL.
    let mut config = provider_config(&op.issuer);
    config.revoke_url = Some("http://127.0.0.1:9/revoke".to_owned());
    let provider =
        provider::build_discovering("oidc".parse().expect("name"), &config, http.clone())
            .await
            .expect("provider");
    assert_eq!(
        provider.info().revoke_url.as_deref(),
        Some("http://127.0.0.1:9/revoke")
    );
    let config = provider_config(&op.issuer.join("/nope").expect("url"));
    let err = provider::build_discovering("oidc".parse().expect("name"), &config, http)
        .await
        .expect_err("discovery failure stops the build");
    assert_eq!(err.key, "issuer");
    assert!(
        err.to_string()
            .contains("/nope/.well-known/openid-configuration"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_interop), ignore = "needs npm ci in interop/oidc-provider")]
async fn application_token_from_the_client_credentials_grant() {
    let op = start_server();
    let client = http();
    let discovery = discover(&client, &op).await;
    // Only the issuer, the grant and the application client's credentials.
    let config: provider::ProviderConfig = toml::from_str(&format!(
        "issuer = \"{}\"\ngrant = \"client_credentials\"\nclient_id = \"{APP_CLIENT_ID}\"\n\
         client_secret = \"{APP_CLIENT_SECRET}\"\nauth_method = \"client_secret_basic\"",
        op.issuer
    ))
    .expect("provider config");
    let provider =
        provider::build_discovering("oidc-app".parse().expect("name"), &config, client_http())
            .await
            .expect("provider");
    assert_eq!(provider.info().token_url, discovery.token_endpoint);
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Arc::new(
        KeyRing::from_base64("k1", [("k1", KeyRing::generate_key_base64().as_str())])
            .expect("keys"),
    );
    let db = format!("sqlite://{}/tw.db", dir.path().display());
    let store = Arc::new(SqliteStore::connect(&db, keys).await.expect("store"));
    let warden = Warden::builder(store)
        .provider(provider)
        .build()
        .expect("valid warden settings");

    // A cold start with 20 callers: one client_credentials grant at the real server.
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let warden = warden.clone();
            tokio::spawn(async move { warden.app_access_token("oidc-app").await })
        })
        .collect();
    let mut tokens = HashSet::new();
    for caller in callers {
        let grant = caller.await.expect("join").expect("application token");
        assert_eq!(&*grant.token_type, "Bearer");
        assert!(grant.expires_at.is_some());
        tokens.insert(grant.access_token.expose_secret().to_owned());
    }
    assert_eq!(tokens.len(), 1, "every caller got the one token");
    assert_eq!(stats(&client, &op).await.client_credentials_grants, 1);

    // The server says the token is live and was issued to the application client.
    let token = tokens.into_iter().next().expect("token");
    let introspection: serde_json::Value = client
        .post(&discovery.introspection_endpoint)
        .basic_auth(APP_CLIENT_ID, Some(APP_CLIENT_SECRET))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .expect("introspection")
        .json()
        .await
        .expect("introspection json");
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], APP_CLIENT_ID, "{introspection}");
}
