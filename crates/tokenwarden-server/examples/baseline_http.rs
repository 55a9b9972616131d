//! The HTTP baselines: a bare axum server that answers the access-token route with fixed
//! bytes of the same shape tokenwarden returns, and `GET /api/items` with a small JSON
//! document, as a provider's API would. `bench/run.sh` drives it and a real
//! `tokenwarden serve` with the same load tool and settings, so their ratio shows what the
//! broker itself costs: the fast path beside the first route, and the proxy (with this
//! server as the provider's API) beside the second, called directly.
//!
//! ```text
//! cargo run --release -p tokenwarden-server --example baseline_http -- 127.0.0.1:8431
//! ```

use axum::Router;
use axum::http::header;
use axum::routing::get;

const BODY: &str = r#"{"access_token":"ya29.a0AfB_byC-benchmark-access-token-of-a-realistic-length-0123456789abcdef","token_type":"Bearer","expires_at":"2030-01-01T00:00:00Z"}"#;
/// A provider API's answer of a typical small size.
const ITEMS: &str = r#"{"items":[{"id":"1","name":"first item","updated_at":"2026-11-30T12:00:00Z"},{"id":"2","name":"second item","updated_at":"2026-11-30T12:00:01Z"}],"next":null}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8431".to_owned());
    let app = Router::new()
        .route(
            "/v1/users/{user}/connections/{provider}/{account}/access-token",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], BODY) }),
        )
        .route(
            "/api/items",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], ITEMS) }),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("baseline listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
