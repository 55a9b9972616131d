//! The HTTP fast-path baseline: a bare axum server that answers the access-token route with
//! fixed bytes of the same shape tokenwarden returns. `bench/run.sh` drives it and a real
//! `tokenwarden serve` with the same load tool and settings, so their ratio shows what the
//! broker itself costs.
//!
//! ```text
//! cargo run --release -p tokenwarden-server --example baseline_http -- 127.0.0.1:8431
//! ```

use axum::Router;
use axum::http::header;
use axum::routing::get;

const BODY: &str = r#"{"access_token":"ya29.a0AfB_byC-benchmark-access-token-of-a-realistic-length-0123456789abcdef","token_type":"Bearer","expires_at":"2030-01-01T00:00:00Z"}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8431".to_owned());
    let app = Router::new().route(
        "/v1/users/{user}/connections/{provider}/{account}/access-token",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], BODY) }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("baseline listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
