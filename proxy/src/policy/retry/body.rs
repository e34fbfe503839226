//! A request body that can be sent again: the first attempt streams it from the downstream while a
//! copy is kept (up to a limit), and a retry replays the copy, then goes on reading the downstream
//! where the last attempt stopped. Past the limit nothing more is kept and the body cannot be
//! replayed (Envoy's `per_request_buffer_limit_bytes`: no retry then).

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One copy of the body; every copy reads the same downstream body. A request without a body shares
/// nothing (no allocation).
pub struct ReplayBody<B> {
    shared: Option<Arc<Mutex<Shared<B>>>>,
    /// How many of the kept frames this copy has sent.
    position: usize,
    trailers_sent: bool,
}

struct Shared<B> {
    /// The downstream body; `None` once it has ended.
    source: Option<B>,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    trailers: Option<HeaderMap>,
    limit: usize,
    /// More than `limit` bytes came, or reading failed: a later copy could not send it all.
    spoiled: bool,
    size_hint: SizeHint,
}

impl<B> ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(source: B, limit: usize) -> Self {
        if source.is_end_stream() {
            return ReplayBody { shared: None, position: 0, trailers_sent: false };
        }
        let size_hint = source.size_hint();
        let spoiled = size_hint.lower() > limit as u64;
        let shared =
            Shared { source: Some(source), kept: Vec::new(), kept_bytes: 0, trailers: None, limit, spoiled, size_hint };
        ReplayBody { shared: Some(Arc::new(Mutex::new(shared))), position: 0, trailers_sent: false }
    }

    /// Another copy, to send from the start; `None` when the body can no longer be replayed whole.
    pub fn replay(&self) -> Option<Self> {
        let copy = || ReplayBody { shared: self.shared.clone(), position: 0, trailers_sent: false };
        match &self.shared {
            None => Some(copy()),
            Some(shared) => (!shared.lock().unwrap_or_else(|e| e.into_inner()).spoiled).then(copy),
        }
    }

    pub fn can_replay(&self) -> bool {
        self.shared.as_ref().is_none_or(|shared| !shared.lock().unwrap_or_else(|e| e.into_inner()).spoiled)
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(shared) = &this.shared else { return Poll::Ready(None) };
        let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(data) = shared.kept.get(this.position) {
            let data = data.clone();
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(source) = shared.source.as_mut() else {
            if shared.spoiled && this.position < shared.kept.len() {
                return Poll::Ready(Some(Err("the request body cannot be sent again".into())));
            }
            if !this.trailers_sent
                && let Some(trailers) = shared.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.spoiled = true;
                shared.source = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !shared.spoiled && shared.kept_bytes + data.len() <= shared.limit {
                        shared.kept_bytes += data.len();
                        shared.kept.push(data.clone());
                        this.position += 1;
                    } else if !shared.spoiled {
                        // Over the limit: what is kept is no use any more.
                        shared.spoiled = true;
                        shared.kept = Vec::new();
                        this.position = 0;
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let Some(shared) = &self.shared else { return true };
        let shared = shared.lock().unwrap_or_else(|e| e.into_inner());
        match &shared.source {
            Some(source) => self.position == shared.kept.len() && source.is_end_stream(),
            None => self.position >= shared.kept.len() && (self.trailers_sent || shared.trailers.is_none()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.shared {
            Some(shared) => shared.lock().unwrap_or_else(|e| e.into_inner()).size_hint,
            None => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    type Source = StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn source(parts: &[&'static str], trailers: bool) -> Source {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
            parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes())))).collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(tokio_stream::iter(frames))
    }

    async fn read(body: ReplayBody<Source>) -> (String, bool) {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().is_some();
        (String::from_utf8(collected.to_bytes().to_vec()).unwrap(), trailers)
    }

    #[tokio::test]
    async fn a_copy_replays_what_the_first_read_then_reads_on() {
        let mut first = ReplayBody::new(source(&["ab", "cd", "ef"], true), 1024);
        let second = first.replay().unwrap();
        // The first attempt reads part of the body, then fails.
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first);
        // The retry gets all of it, trailers included, and a third copy too.
        let third = second.replay().unwrap();
        assert_eq!(read(second).await, ("abcdef".to_string(), true));
        assert_eq!(read(third).await, ("abcdef".to_string(), true));
    }

    #[tokio::test]
    async fn a_request_without_a_body_replays_as_one_without_sharing_anything() {
        let first = ReplayBody::new(http_body_util::Empty::<Bytes>::new(), 0);
        assert!(first.shared.is_none() && first.is_end_stream() && first.can_replay());
        let copy = first.replay().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes().len(), 0);
        assert!(copy.is_end_stream() && copy.size_hint().exact() == Some(0));
        assert_eq!(copy.collect().await.unwrap().to_bytes().len(), 0);
    }

    #[tokio::test]
    async fn past_the_limit_the_body_streams_on_but_cannot_be_replayed() {
        let first = ReplayBody::new(source(&["12345", "67890"], false), 8);
        let copy = first.replay().unwrap();
        assert_eq!(read(first).await, ("1234567890".to_string(), false));
        assert!(!copy.can_replay());
        assert!(copy.replay().is_none());
    }
}
