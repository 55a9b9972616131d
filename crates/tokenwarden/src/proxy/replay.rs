//! The replay buffer: how much of a request body is kept so the request can be sent a second
//! time, after an upstream 401 and a refresh.
//!
//! The policy: a body of at most `limit` bytes (`proxy.max_replay_bytes`, by default
//! [`super::DEFAULT_MAX_REPLAY_BYTES`]) is read whole before the request goes out, and can
//! then be sent any number of times. A larger one (by its `Content-Length`, at once, or
//! found while reading) goes out as it arrives: what was read so far first, the rest
//! streamed behind it, and never more than `limit` bytes held. It can be sent once, so its
//! 401 goes back to the client as the upstream sent it.
//!
//! Reading small bodies first costs a body's transfer time before the request starts;
//! what it buys is that the 401 of any request that fits can be answered by a retry, even
//! when the upstream answered before it read the body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A request body after [`collect_for_replay`].
#[derive(Debug)]
pub enum Collected<B> {
    /// The whole body, within the limit: it can be sent again.
    Complete(Bytes),
    /// A body over the limit: what was read, then the rest. It can be sent once.
    Streaming(Prefixed<B>),
}

/// Reads `body` up to `limit` bytes (see the module doc). Trailers of a body that fits are
/// dropped (an HTTP/1.1 request with trailers is rare, and they cannot be replayed with it).
///
/// # Errors
/// The body's own error while reading it.
pub async fn collect_for_replay<B>(mut body: B, limit: usize) -> Result<Collected<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
    if body.size_hint().lower() > limit_u64 {
        return Ok(Collected::Streaming(Prefixed::new(VecDeque::new(), body)));
    }
    let mut chunks = VecDeque::new();
    let mut len = 0usize;
    loop {
        if body.is_end_stream() {
            break;
        }
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let Some(frame) = frame else { break };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        len = len.saturating_add(data.len());
        chunks.push_back(data);
        if len > limit {
            return Ok(Collected::Streaming(Prefixed::new(chunks, body)));
        }
    }
    Ok(Collected::Complete(join(chunks, len)))
}

fn join(mut chunks: VecDeque<Bytes>, len: usize) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop_front().unwrap_or_default();
    }
    let mut all = Vec::with_capacity(len);
    for chunk in chunks {
        all.extend_from_slice(&chunk);
    }
    Bytes::from(all)
}

/// A body that yields chunks already read, then the rest of the body they came from.
///
/// It is `Sync` whatever it wraps (the body sits behind a mutex that is never locked, only
/// reached through `&mut`), because HTTP clients want `Sync` bodies and a server's request
/// body often is not.
#[derive(Debug)]
pub struct Prefixed<B> {
    prefix: VecDeque<Bytes>,
    prefix_len: u64,
    rest: Mutex<B>,
}

impl<B> Prefixed<B> {
    fn new(prefix: VecDeque<Bytes>, rest: B) -> Self {
        let prefix_len = prefix.iter().map(|c| c.len() as u64).sum();
        Self {
            prefix,
            prefix_len,
            rest: Mutex::new(rest),
        }
    }

    /// Bytes read before it went out.
    pub fn buffered(&self) -> u64 {
        self.prefix_len
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.prefix.pop_front() {
            this.prefix_len -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let rest = this
            .rest
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Pin::new(rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty()
            && self
                .rest
                .lock()
                .map(|rest| rest.is_end_stream())
                .unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        let Ok(rest) = self.rest.lock() else {
            return SizeHint::default();
        };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(self.prefix_len));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(self.prefix_len));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// A body of fixed chunks with an optional exact length hint.
    struct Chunks {
        chunks: VecDeque<Bytes>,
        exact: Option<u64>,
        polled: usize,
    }

    impl Chunks {
        fn new(chunks: &[&'static [u8]], exact: Option<u64>) -> Self {
            Self {
                chunks: chunks.iter().map(|c| Bytes::from_static(c)).collect(),
                exact,
                polled: 0,
            }
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let this = self.get_mut();
            this.polled += 1;
            Poll::Ready(this.chunks.pop_front().map(|c| Ok(Frame::data(c))))
        }
        fn size_hint(&self) -> SizeHint {
            self.exact.map_or_else(SizeHint::new, SizeHint::with_exact)
        }
    }

    async fn drain<B: Body<Data = Bytes> + Unpin>(mut body: B) -> Vec<u8>
    where
        B::Error: std::fmt::Debug,
    {
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            if let Ok(data) = frame.expect("frame").into_data() {
                out.extend_from_slice(&data);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_kept_whole() {
        let body = Chunks::new(&[b"hello ", b"", b"world"], None);
        match collect_for_replay(body, 11).await.expect("reads") {
            Collected::Complete(bytes) => assert_eq!(&bytes[..], b"hello world"),
            Collected::Streaming(_) => panic!("11 bytes fit a limit of 11"),
        }
        match collect_for_replay(Chunks::new(&[], Some(0)), 0)
            .await
            .expect("reads")
        {
            Collected::Complete(bytes) => assert!(bytes.is_empty()),
            Collected::Streaming(_) => panic!("an empty body fits any limit"),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_with_what_was_read_first() {
        let body = Chunks::new(&[b"hello ", b"big ", b"world"], None);
        let Collected::Streaming(prefixed) = collect_for_replay(body, 8).await.expect("reads")
        else {
            panic!("15 bytes do not fit 8");
        };
        assert_eq!(
            prefixed.buffered(),
            10,
            "reading stopped at the chunk that went over"
        );
        assert_eq!(drain(prefixed).await, b"hello big world");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_not_read_at_all() {
        let body = Chunks::new(&[b"0123456789"], Some(10));
        let Collected::Streaming(prefixed) = collect_for_replay(body, 9).await.expect("reads")
        else {
            panic!("a declared 10 bytes do not fit 9");
        };
        assert_eq!(prefixed.buffered(), 0);
        assert_eq!(
            prefixed.rest.lock().expect("lock").polled,
            0,
            "nothing was read"
        );
        assert_eq!(
            prefixed.size_hint().exact(),
            Some(10),
            "its length is still known"
        );
        assert_eq!(drain(prefixed).await, b"0123456789");
    }

    #[test]
    fn prefixed_is_sync_around_a_body_that_is_not() {
        fn sync<T: Sync>() {}
        // `Cell` is `Send` but not `Sync`.
        sync::<Prefixed<std::cell::Cell<u8>>>();
    }
}
