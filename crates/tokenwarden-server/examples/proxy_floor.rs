//! A floor for the proxy benchmark (issue 13, BENCHMARKS.md "Proxy"): the least a forwarding
//! proxy on this stack (tokio, hyper) costs per request, with none of tokenwarden's work (no
//! API key, no token, no path rules, no metrics). Each inbound connection gets one upstream
//! connection of its own, and every request is sent on it with `Authorization` set.
//!
//! ```text
//! cargo run --release -p tokenwarden-server --example proxy_floor -- LISTEN UPSTREAM FROM TO
//! ```
//!
//! A request path starting with `FROM` goes upstream with `TO` in its place (others as they
//! are). Not a product: for measuring only.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "proxy_floor LISTEN UPSTREAM FROM TO";
    let listen = args.next().ok_or(usage)?;
    let upstream: Arc<str> = args.next().ok_or(usage)?.into();
    let from: Arc<str> = args.next().ok_or(usage)?.into();
    let to: Arc<str> = args.next().ok_or(usage)?.into();
    let listener = TcpListener::bind(&listen).await?;
    loop {
        let (inbound, _) = listener.accept().await?;
        let (upstream, from, to) = (upstream.clone(), from.clone(), to.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(inbound, upstream, from, to).await {
                eprintln!("connection: {e}");
            }
        });
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn serve(
    inbound: TcpStream,
    upstream: Arc<str>,
    from: Arc<str>,
    to: Arc<str>,
) -> Result<(), Error> {
    inbound.set_nodelay(true)?;
    let outbound = TcpStream::connect(&*upstream).await?;
    outbound.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(outbound)).await?;
    tokio::spawn(connection);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let host = HeaderValue::from_str(&upstream)?;
    let service = service_fn(move |request: Request<Incoming>| {
        let (sender, from, to, host) = (sender.clone(), from.clone(), to.clone(), host.clone());
        async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let path = match path.strip_prefix(&*from) {
                Some(rest) => format!("{to}{rest}"),
                None => path.to_owned(),
            };
            parts.uri = Uri::try_from(path).map_err(std::io::Error::other)?;
            parts.headers.insert(HOST, host);
            parts.headers.insert(
                AUTHORIZATION,
                HeaderValue::from_static("Bearer floor-token"),
            );
            let mut sender = sender.lock().await;
            sender.ready().await.map_err(std::io::Error::other)?;
            let response = sender
                .send_request(Request::from_parts(parts, body))
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(response)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(inbound), service)
        .await?;
    Ok(())
}
