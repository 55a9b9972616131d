//! Proxied bodies with an idle timeout: a body that keeps flowing is never cut off, however
//! long it takes (a large upload or download), but one that stops for longer than the idle
//! time fails. An uploaded body also says when it has been sent whole, so the wait for the
//! API's answer can start then and not when the call began.
//!
//! The idle time is counted while the body is waited for (its inner body is not ready), and
//! the timer exists only then: a body whose frames are ready whenever they are asked for (a
//! small answer, read at once) never starts one, which keeps timers off the proxy's common
//! path.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// A body's error: the inner body's, or [`IdleTimeout`].
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// No frame came within the idle time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTimeout(pub Duration);

impl fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no data for {} ms", self.0.as_millis())
    }
}

impl StdError for IdleTimeout {}

/// `inner`, failing with [`IdleTimeout`] when no frame comes for `idle`, and telling `sent`
/// (when given) once its last frame has been taken.
pub struct Idle<B> {
    inner: B,
    idle: Duration,
    /// The timer, made the first time the inner body is not ready.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` runs for the current wait (a frame ends each wait).
    armed: bool,
    sent: Option<watch::Sender<bool>>,
}

impl<B> Idle<B> {
    pub fn new(inner: B, idle: Duration, sent: Option<watch::Sender<bool>>) -> Self {
        Self {
            inner,
            idle,
            sleep: None,
            armed: false,
            sent,
        }
    }

    fn finished(&self) {
        if let Some(sent) = &self.sent {
            sent.send_replace(true);
        }
    }
}

impl<B> fmt::Debug for Idle<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idle").field("idle", &self.idle).finish()
    }
}

impl<B> Body for Idle<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                if this.inner.is_end_stream() {
                    this.finished();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.finished();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let sleep = match (&mut this.sleep, this.armed) {
                    (Some(sleep), true) => sleep,
                    (Some(sleep), false) => {
                        sleep.as_mut().reset(Instant::now() + this.idle);
                        sleep
                    }
                    (None, _) => this.sleep.insert(Box::pin(tokio::time::sleep(this.idle))),
                };
                this.armed = true;
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimeout(this.idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.finished();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// `chunks` frames of growing size, one every `gap` (tokio time).
    struct Paced {
        left: usize,
        sent: usize,
        gap: Duration,
        sleep: Pin<Box<Sleep>>,
    }

    fn paced(chunks: usize, gap: Duration) -> Paced {
        Paced {
            left: chunks,
            sent: 0,
            gap,
            sleep: Box::pin(tokio::time::sleep(gap)),
        }
    }

    impl Body for Paced {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let this = self.get_mut();
            if this.left == 0 {
                return Poll::Ready(None);
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.left -= 1;
            this.sent += 1;
            let next = Instant::now() + this.gap;
            this.sleep.as_mut().reset(next);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; this.sent])))))
        }
    }

    /// Every data byte of `body`, or its first error.
    async fn collect<B: Body<Data = Bytes> + Unpin>(mut body: B) -> Result<usize, B::Error> {
        let mut len = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            if let Ok(data) = frame?.into_data() {
                len += data.len();
            }
        }
        Ok(len)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_flowing_is_never_cut_off_and_says_when_it_is_sent() {
        let (sent, mut done) = watch::channel(false);
        // 20 frames 400 ms apart: 8 s in all, against an idle time of 1 s.
        let body = Idle::new(
            paced(20, Duration::from_millis(400)),
            Duration::from_secs(1),
            Some(sent),
        );
        assert!(!*done.borrow());
        let len = collect(body).await.expect("no timeout");
        assert_eq!(len, (1..=20).sum::<usize>());
        done.wait_for(|sent| *sent).await.expect("told");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_fails_after_the_idle_time() {
        let started = Instant::now();
        let body = Idle::new(
            paced(3, Duration::from_secs(5)),
            Duration::from_secs(1),
            None,
        );
        let error = collect(body).await.expect_err("timed out");
        assert_eq!(
            error.downcast_ref::<IdleTimeout>(),
            Some(&IdleTimeout(Duration::from_secs(1)))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
