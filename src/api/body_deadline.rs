//! A deadline on reading a request's body, for every route (RPC, `/api/*`, the control UI,
//! the platforms' webhooks).
//!
//! hyper bounds how long a client may take to send its headers
//! (`server.header_timeout_ms`); this bounds the body that follows by the same time, so a
//! client that announces a body and trickles it (or never sends it) cannot hold a connection
//! and a handler open. The timer is armed only when the body is not already there: a small
//! body arrives with its headers, and then no timer is touched at all (a timer per request,
//! armed while the handler waits for a decision, was about 3 % of the instructions of a
//! request and its decision over HTTP).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

/// Wrap `request`'s body so that reading it fails once it has kept the reader waiting for
/// `limit` in all.
pub fn limit_body_read(request: axum::extract::Request, limit: Duration) -> axum::extract::Request {
    request.map(|body| Body::new(DeadlineBody::new(body, limit)))
}

/// A body that must be read to its end within `limit` of the first time it made the reader
/// wait.
struct DeadlineBody {
    inner: Body,
    limit: Duration,
    /// Set the first time the inner body is not ready; never reset, so a trickle of bytes
    /// does not extend it.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Body, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
        }
    }
}

/// What reading a body past its deadline fails with (shown in the 400 answer).
#[derive(Debug)]
pub struct BodyTooSlow(Duration);

impl std::fmt::Display for BodyTooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} ms (server.header_timeout_ms)",
            self.0.as_millis()
        )
    }
}

impl std::error::Error for BodyTooSlow {}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let limit = this.limit;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow(limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_that_is_there_is_read_and_a_stalled_one_fails_at_its_deadline() {
        let limit = Duration::from_millis(100);
        let whole = DeadlineBody::new(Body::from("{\"a\":1}"), limit);
        let bytes = whole.collect().await.expect("read").to_bytes();
        assert_eq!(&bytes[..], b"{\"a\":1}");

        // A body that sends one chunk and then nothing more.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"{\"a\":"))))
            .await
            .expect("send");
        let stalled = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let started = tokio::time::Instant::now();
        let err = DeadlineBody::new(stalled, limit)
            .collect()
            .await
            .expect_err("a stalled body fails");
        assert!(
            err.to_string().contains("did not arrive within 100 ms"),
            "{err}"
        );
        assert!(started.elapsed() >= limit);
        drop(tx);
    }
}
