//! The proxy's connections to one provider's API: HTTP/1.1 over TCP, or over TLS verified
//! against the platform's roots (as the library's own client verifies token endpoints), kept
//! open and used again.
//!
//! The shape is the least a forwarding proxy can do per call (see BENCHMARKS.md, "Proxy"):
//! a call takes an idle connection of the API's pool (or opens one), writes the request on it
//! and hands the answer back with the connection inside its body; when the body has been read
//! to its end the connection goes back to the pool, and when it is dropped early (the client
//! went away) the connection is closed with it, since it may still carry the rest. No task
//! is started per call, and nothing is looked up per call but the pool's last idle entry.
//!
//! A connection can be back in the pool before it is free: an API may answer (a 401, a 413)
//! before it has read a streamed upload, which then goes on. A call only takes a connection
//! hyper says is ready for a request, so it never waits behind another call's upload.
//!
//! A kept connection the API closed meanwhile is noticed when it is taken (hyper marks it
//! closed) or when the request cannot be written on it; either way the call goes out on
//! another one, and only a request that was never written is sent again.
//!
//! Redirects are never followed (an answer is an answer), and nothing here reads the
//! environment's `HTTP(S)_PROXY`: calls go straight to the API.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::http::{HeaderValue, Request, Response};
use hyper_util::rt::TokioIo;
use tokenwarden::proxy::Prefixed;
use tokenwarden::proxy::idle::{BoxError, Idle};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// How long a kept connection may sit idle before it is closed rather than used: shorter
/// than common servers' keep-alive (nginx 75 s, many APIs 60-120 s), so a connection the
/// API is about to close is rarely the one a call takes.
pub const IDLE_KEEP: Duration = Duration::from_secs(50);

/// At most this many idle connections are kept per API; more are closed when they come back.
pub const MAX_IDLE: usize = 256;

/// TCP keepalive on every connection (as reqwest's default): a kept connection that a
/// firewall or NAT dropped silently is found dead instead of taking a call into a black hole.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// A request body as the proxy sends it.
pub enum Outbound {
    /// A body read whole (or none): it can be sent again.
    Kept(Option<Bytes>),
    /// A body too large to keep, streamed as it arrives.
    Streaming(Idle<Prefixed<axum::body::Body>>),
}

impl Body for Outbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Kept(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Kept(bytes) => bytes.is_none(),
            Self::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Kept(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Streaming(body) => body.size_hint(),
        }
    }
}

/// Why a call got no answer. None of them carries the URL (it may hold a token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connecting (name lookup, TCP and TLS included) took longer than this connect timeout.
    ConnectTimeout(Duration),
    /// The connection could not be made; the reason is a fixed phrase.
    Connect(&'static str),
    /// The request's own body failed while it was being sent (the client went away, or it
    /// stopped sending for the idle time).
    RequestBody,
    /// The connection failed before the API's answer came.
    NoAnswer,
}

/// One API's origin and its pool of kept connections.
pub struct Upstream {
    host: Host,
    port: u16,
    /// `Host` of every request: the base URL's host, and its port when not the default.
    host_header: HeaderValue,
    /// The TLS client and the name the certificate must match, for an `https` API.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    pool: Arc<Pool>,
}

enum Host {
    Name(String),
    Ip(IpAddr),
}

/// What an [`Upstream`] cannot be made of.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("api_base_url must be an http or https URL with a host")]
    NotHttp,
    #[error("TLS client: {0}")]
    Tls(#[from] rustls::Error),
}

/// The TLS settings every `https` API is reached with: the platform's verifier (the system's
/// roots, `SSL_CERT_FILE` honoured), the process's crypto provider or aws-lc-rs, and
/// HTTP/1.1 offered by ALPN.
///
/// # Errors
/// When the verifier or the protocol versions cannot be set up.
pub fn tls_client() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Upstream {
    /// The API at `base`'s origin. `tls` is used when its scheme is `https`.
    ///
    /// # Errors
    /// When `base` is not an `http` or `https` URL with a host.
    pub fn new(
        base: &url::Url,
        tls: &Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let secure = match base.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(UpstreamError::NotHttp),
        };
        let port = base.port_or_known_default().ok_or(UpstreamError::NotHttp)?;
        let (host, name) = match base.host().ok_or(UpstreamError::NotHttp)? {
            url::Host::Domain(domain) => (
                Host::Name(domain.to_owned()),
                ServerName::try_from(domain.to_owned()).map_err(|_| UpstreamError::NotHttp)?,
            ),
            url::Host::Ipv4(ip) => (Host::Ip(ip.into()), ServerName::IpAddress(ip.into())),
            url::Host::Ipv6(ip) => (Host::Ip(ip.into()), ServerName::IpAddress(ip.into())),
        };
        let mut authority = base.host_str().ok_or(UpstreamError::NotHttp)?.to_owned();
        if let Some(port) = base.port() {
            authority.push_str(&format!(":{port}"));
        }
        let host_header = HeaderValue::try_from(authority).map_err(|_| UpstreamError::NotHttp)?;
        Ok(Self {
            host,
            port,
            host_header,
            tls: secure.then(|| (TlsConnector::from(Arc::clone(tls)), name)),
            connect_timeout,
            pool: Arc::new(Pool::default()),
        })
    }

    /// The `Host` header of this API's requests.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// Sends `request` (an origin-form URI, its `Host` set) on a kept connection or a new
    /// one, and returns the answer once its head has come; its body holds the connection.
    ///
    /// # Errors
    /// A [`Failure`] when no answer came.
    pub async fn send(
        &self,
        mut request: Request<Outbound>,
    ) -> Result<Response<Returning>, Failure> {
        loop {
            let (mut sender, kept) = match self.pool.take() {
                Some(sender) => (sender, true),
                // Boxed: connecting (TCP, TLS, the handshake) is a large state machine that
                // a call on a kept connection would otherwise carry, and move, every time.
                None => (Box::pin(self.connect()).await?, false),
            };
            if sender.ready().await.is_err() {
                if kept {
                    continue;
                }
                return Err(Failure::Connect("connection closed"));
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let pool = Arc::clone(&self.pool);
                    return Ok(response.map(|body| Returning::new(body, sender, pool)));
                }
                Err(mut error) => match error.take_message() {
                    // Never written: a kept connection that had just closed. Again, on
                    // another.
                    Some(unsent) if kept => request = unsent,
                    _ => return Err(failure(&error.into_error())),
                },
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Outbound>, Failure> {
        let connecting = async {
            let tcp = match &self.host {
                Host::Name(name) => TcpStream::connect((name.as_str(), self.port)).await,
                Host::Ip(ip) => TcpStream::connect((*ip, self.port)).await,
            }
            .map_err(|_| Failure::Connect("connection failed"))?;
            // Requests and answers are written whole: nothing is gained by waiting to
            // coalesce them.
            let _ = tcp.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(TCP_KEEPALIVE)
                .with_interval(TCP_KEEPALIVE);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            match &self.tls {
                None => handshake(tcp).await,
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|_| Failure::Connect("TLS handshake failed"))?;
                    handshake(tls).await
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| Failure::ConnectTimeout(self.connect_timeout))?
    }
}

/// Starts HTTP/1.1 on a connected stream; the connection runs as a task of its own until
/// its sender is dropped (or the API closes it).
async fn handshake<T>(io: T) -> Result<SendRequest<Outbound>, Failure>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| Failure::Connect("connection failed"))?;
    // Its errors reach the call that was on it, through the sender.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn failure(error: &hyper::Error) -> Failure {
    // The request body's own error is a user error with that error as its cause; a user
    // error without one is hyper's connection task gone, which is no fault of the client's.
    let body_failed = error.is_user() && std::error::Error::source(error).is_some();
    if body_failed || error.is_body_write_aborted() {
        Failure::RequestBody
    } else {
        Failure::NoAnswer
    }
}

/// Idle connections, the last returned on top (the one most likely still open).
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<(SendRequest<Outbound>, Instant)>>,
}

impl Pool {
    /// The most recently returned connection that is ready for a request. Closed and expired
    /// ones met on the way are dropped; busy ones (still sending an upload the API answered
    /// early) stay for later.
    fn take(&self) -> Option<SendRequest<Outbound>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut at = idle.len();
        while at > 0 {
            at -= 1;
            let (sender, since) = &idle[at];
            if sender.is_closed() || since.elapsed() >= IDLE_KEEP {
                idle.remove(at);
            } else if sender.is_ready() {
                return Some(idle.remove(at).0);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Outbound>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The oldest entries are at the bottom: drop those that waited too long, so a pool
        // that grew under load shrinks back when the load goes.
        let expired = idle
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= IDLE_KEEP)
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE {
            idle.push((sender, now));
        }
    }
}

/// An answer's body, holding the connection it came on: back to the pool once read to its
/// end, closed if dropped before.
pub struct Returning {
    body: Incoming,
    ended: bool,
    connection: Option<(SendRequest<Outbound>, Arc<Pool>)>,
}

impl Returning {
    fn new(body: Incoming, sender: SendRequest<Outbound>, pool: Arc<Pool>) -> Self {
        Self {
            body,
            ended: false,
            connection: Some((sender, pool)),
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if self.is_end_stream()
            && let Some((sender, pool)) = self.connection.take()
        {
            pool.put(sender);
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
