//! The proxy to `https` APIs: the certificate is checked against the platform's roots (here
//! a test CA given by `SSL_CERT_FILE`, which the platform verifier honours as the library's
//! token client does), with the API's host name. The binary is run as a process of its own,
//! so the variable is its environment alone.
//!
//! `tests/fixtures/tls/`: `ca.pem` (the test CA); `api.pem` (signed by it for 127.0.0.1 and
//! localhost); `elsewhere.pem` (signed by it for `elsewhere.test` only); `untrusted.pem`
//! (self-signed for 127.0.0.1 and localhost). Made once with `openssl` (P-256, 100 years);
//! the CA's key was not kept.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use common::API_KEY;
use http_body_util::Full;
use serde_json::json;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// An HTTPS API on 127.0.0.1 presenting certificate `name`, answering every request with
/// its path and `Authorization` header. Returns its port.
async fn tls_api(name: &str) -> u16 {
    let certs = CertificateDer::pem_file_iter(fixture(&format!("{name}.pem")))
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(fixture(&format!("{name}.key"))).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake (the proxy does not trust us) ends here.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|request: hyper::Request<_>| {
                    let authorization = request
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    let text = format!("{} {authorization}", request.uri().path());
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::<Bytes>::from(text))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

fn provider(name: &str, base: &str) -> String {
    format!(
        "\n[providers.{name}]\nkind = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         token_url = \"http://127.0.0.1:9/token\"\napi_base_url = \"{base}\"\n"
    )
}

#[tokio::test]
async fn https_apis_are_reached_only_with_a_certificate_the_platform_trusts_for_their_name() {
    let trusted = tls_api("api").await;
    let wrong_name = tls_api("elsewhere").await;
    let untrusted = tls_api("untrusted").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = [
        provider("secure", &format!("https://127.0.0.1:{trusted}/api")),
        provider("named", &format!("https://localhost:{trusted}/v2")),
        provider("mismatch", &format!("https://127.0.0.1:{wrong_name}/api")),
        provider("selfsigned", &format!("https://localhost:{untrusted}/api")),
    ]
    .concat();
    let config = common::config_toml(&dir, "http://127.0.0.1:9/token", &extra);
    let path = dir.path().join("tokenwarden.toml");
    std::fs::write(&path, &config).expect("write config");
    let ca = fixture("ca.pem");
    let running = binary::start(
        dir.path(),
        &["serve", "--config", path.to_str().expect("utf-8")],
        &[("SSL_CERT_FILE", ca.to_str().expect("utf-8"))],
    );
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    for provider in ["secure", "named", "mismatch", "selfsigned"] {
        let imported = client
            .put(format!("{base}/v1/users/u1/connections/{provider}/a1"))
            .bearer_auth(API_KEY)
            .json(&json!({"access_token": format!("tls-token-{provider}"), "expires_in": 3600}))
            .send()
            .await
            .expect("import");
        assert_eq!(imported.status(), 201);
    }
    let call = |provider: &str| {
        client
            .get(format!("{base}/v1/proxy/u1/{provider}/a1/me"))
            .bearer_auth(API_KEY)
            .send()
    };
    for (provider, expected) in [
        ("secure", "/api/me Bearer tls-token-secure"),
        ("named", "/v2/me Bearer tls-token-named"),
    ] {
        // Twice: the second call goes on the kept TLS connection.
        for _ in 0..2 {
            let answer = call(provider).await.expect("proxied");
            assert_eq!(answer.status(), 200, "{provider}");
            assert_eq!(answer.text().await.expect("text"), expected);
        }
    }
    for provider in ["mismatch", "selfsigned"] {
        let answer = call(provider).await.expect("proxied");
        assert_eq!(
            answer.headers()["tokenwarden-error"],
            "UPSTREAM_UNREACHABLE"
        );
        let error = common::error_of(answer, 502).await;
        let message = error["message"].as_str().expect("message");
        assert!(message.contains("TLS handshake failed"), "{message}");
        assert_eq!(error["details"]["provider"], provider);
    }
    running.stop();
}
