//! Request bodies that can be sent again, up to a bound: the first attempt reads the client's
//! body and records what it forwarded; a later attempt replays the record, then goes on
//! reading the client where the first left off. Once more than the bound was forwarded the
//! record is dropped and the body can no longer be replayed (counted, so an operator sees
//! when bodies are too large to retry). Attempts run one after another, so the shared state
//! is only ever read by one of them at a time.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;

use crate::body::{BodySource, BoxError, BytesIn, RequestBody};

/// What the attempts share.
struct State {
    /// The client's body.
    source: RequestBody,
    /// Data chunks forwarded so far, while they fit the bound.
    recorded: Vec<Bytes>,
    recorded_bytes: usize,
    limit: usize,
    /// More than `limit` was forwarded: no replay.
    overflowed: bool,
    trailers: Option<HeaderMap>,
    /// Counts bodies that outgrew the bound.
    overflow: Option<metrics::Counter>,
    /// The client's bytes read (once, however many attempts).
    read: BytesIn,
}

/// The handle an exchange keeps to start attempts' bodies.
#[derive(Clone)]
pub struct Replay(Arc<Mutex<State>>);

impl Replay {
    /// Wraps the client's body; `limit` bytes at most are kept for replay.
    pub fn new(
        source: RequestBody,
        limit: usize,
        overflow: Option<metrics::Counter>,
        read: BytesIn,
    ) -> Replay {
        Replay(Arc::new(Mutex::new(State {
            source,
            recorded: Vec::new(),
            recorded_bytes: 0,
            limit,
            overflowed: false,
            trailers: None,
            overflow,
            read,
        })))
    }

    /// The request's `content-length`, if it had one.
    pub fn declared(&self) -> Option<u64> {
        self.lock().source.declared
    }

    /// Whether another attempt can have the whole body.
    pub fn replayable(&self) -> bool {
        !self.lock().overflowed
    }

    /// The body of the next attempt: the record first, then the client's body.
    pub fn attempt(&self) -> ReplaySource {
        ReplaySource {
            state: self.0.clone(),
            next: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One attempt's body.
pub struct ReplaySource {
    state: Arc<Mutex<State>>,
    /// The next recorded chunk this attempt sends.
    next: usize,
}

impl BodySource for ReplaySource {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BoxError>> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(chunk) = st.recorded.get(self.next) {
            self.next += 1;
            return Poll::Ready(Ok(Some(chunk.clone())));
        }
        let polled = std::pin::Pin::new(&mut st.source).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(Ok(None)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    st.read.add(data.len() as u64);
                    if !st.overflowed {
                        if st.recorded_bytes + data.len() <= st.limit {
                            st.recorded_bytes += data.len();
                            st.recorded.push(data.clone());
                            self.next = st.recorded.len();
                        } else {
                            st.overflowed = true;
                            st.recorded = Vec::new();
                            self.next = 0;
                            if let Some(c) = &st.overflow {
                                c.increment(1);
                            }
                        }
                    }
                    Poll::Ready(Ok(Some(data)))
                }
                Err(frame) => {
                    st.trailers = frame.into_trailers().ok();
                    Poll::Ready(Ok(None))
                }
            },
        }
    }

    fn poll_trailers(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, BoxError>> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Poll::Ready(Ok(st.trailers.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Chunks(Vec<Bytes>);

    impl BodySource for Chunks {
        fn poll_data(&mut self, _: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BoxError>> {
            Poll::Ready(Ok((!self.0.is_empty()).then(|| self.0.remove(0))))
        }
        fn poll_trailers(
            &mut self,
            _: &mut Context<'_>,
        ) -> Poll<Result<Option<HeaderMap>, BoxError>> {
            Poll::Ready(Ok(None))
        }
    }

    fn client(chunks: &[&'static str]) -> RequestBody {
        let c = chunks
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        RequestBody::streaming(Chunks(c), None, false, 0)
    }

    async fn read(src: ReplaySource) -> String {
        let body = RequestBody::streaming(src, None, false, 0);
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn a_body_within_the_bound_is_sent_again_whole() {
        let read_bytes = BytesIn::default();
        let r = Replay::new(client(&["ab", "cd"]), 8, None, read_bytes.clone());
        assert_eq!(read(r.attempt()).await, "abcd");
        assert!(r.replayable());
        assert_eq!(read(r.attempt()).await, "abcd");
        assert_eq!(read_bytes.get(), 4, "the client's bytes are read once");
    }

    #[tokio::test]
    async fn a_replay_goes_on_where_the_first_attempt_stopped_reading() {
        let r = Replay::new(client(&["ab", "cd", "ef"]), 8, None, BytesIn::default());
        let mut first = r.attempt();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(first.poll_data(&mut cx), Poll::Ready(Ok(Some(_)))));
        drop(first);
        assert_eq!(read(r.attempt()).await, "abcdef");
    }

    #[tokio::test]
    async fn a_body_over_the_bound_is_not_replayable() {
        let r = Replay::new(client(&["abcd", "efgh"]), 6, None, BytesIn::default());
        assert_eq!(read(r.attempt()).await, "abcdefgh");
        assert!(!r.replayable());
    }
}
