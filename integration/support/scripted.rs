//! A scripted upstream: each request says, in `x-script`, what its attempts get (`503,reset,ok`:
//! the first attempt a 503, the second a reset connection, the third and later a 200), and carries
//! an `x-test-id` that groups its attempts. Actions: a status code, `ok`, `reset` (the connection
//! closes with no response), `hang` (no answer for 30 s), `slow-N` (a 200 after N ms), `grpc-N` (a
//! trailers-only gRPC answer with status N), `after-N` (a 503 with `retry-after: N`), `ratelimited`
//! (a 429 with `x-envoy-ratelimited`), `flagged` (a 200 with `x-retry-me: yes`). Every attempt is
//! recorded: when it came, its headers and how many body bytes it carried. Health
//! probes get their own answers, switched with [`Scripted::set_healthy`]: `GET /healthz` 200 or 503,
//! and `grpc.health.v1.Health/Check` SERVING or NOT_SERVING.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed()
}

/// One attempt as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub body_bytes: usize,
    pub headers: http::HeaderMap,
}

/// A running scripted upstream.
#[derive(Clone)]
pub struct Scripted {
    pub addr: SocketAddr,
    pub name: &'static str,
    /// One action for every request, whatever its script says.
    fixed: Arc<Mutex<Option<&'static str>>>,
    seen: Arc<Mutex<HashMap<String, Vec<Seen>>>>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl Scripted {
    pub async fn start(name: &'static str) -> Scripted {
        Self::start_with(name, None).await
    }

    /// An upstream that answers every request with `action` (e.g. a broken one: `"503"`).
    pub async fn always(name: &'static str, action: &'static str) -> Scripted {
        Self::start_with(name, Some(action)).await
    }

    /// An HTTP/2-capable upstream that lets a client open at most `streams` streams at once per
    /// connection (its `SETTINGS_MAX_CONCURRENT_STREAMS`), answering every request with `action`.
    pub async fn with_stream_limit(name: &'static str, action: &'static str, streams: u32) -> Scripted {
        Self::serve(name, Some(action), Some(streams)).await
    }

    async fn start_with(name: &'static str, fixed: Option<&'static str>) -> Scripted {
        Self::serve(name, fixed, None).await
    }

    async fn serve(name: &'static str, fixed: Option<&'static str>, streams: Option<u32>) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let scripted = Scripted { addr, name, fixed: Arc::new(Mutex::new(fixed)), seen: Arc::default(), healthy };
        let server = scripted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| server.clone().answer(req));
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    if let Some(streams) = streams {
                        builder.http2().max_concurrent_streams(streams);
                    }
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        scripted
    }

    /// What health probes are told from now on.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on every request gets `action` (or, with `None`, what its script says).
    pub fn set_action(&self, action: Option<&'static str>) {
        *self.fixed.lock().unwrap() = action;
    }

    /// The attempts that came for a test id.
    pub fn attempts(&self, id: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().get(id).cloned().unwrap_or_default()
    }

    async fn answer(self, req: http::Request<hyper::body::Incoming>) -> Result<http::Response<Body>, std::io::Error> {
        let healthy = self.healthy.load(std::sync::atomic::Ordering::SeqCst);
        match req.uri().path() {
            "/healthz" => {
                let status = if healthy { 200 } else { 503 };
                return Ok(http::Response::builder().status(status).body(full(Bytes::new())).unwrap());
            }
            "/grpc.health.v1.Health/Check" => {
                // HealthCheckResponse { status: SERVING (1) or NOT_SERVING (2) }, then grpc-status 0.
                let message = Bytes::from(vec![0, 0, 0, 0, 2, 0x08, if healthy { 1 } else { 2 }]);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                    vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
                let body = StreamBody::new(tokio_stream::iter(frames)).boxed();
                return Ok(http::Response::builder().header("content-type", "application/grpc").body(body).unwrap());
            }
            _ => {}
        }
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let (id, script) = (header("x-test-id"), header("x-script"));
        let (parts, body) = req.into_parts();
        let body_bytes = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
        let attempt = {
            let mut seen = self.seen.lock().unwrap();
            let list = seen.entry(id).or_default();
            list.push(Seen { at: Instant::now(), body_bytes, headers: parts.headers });
            list.len() - 1
        };
        let fixed = *self.fixed.lock().unwrap();
        let actions: Vec<&str> = script.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
        let action = fixed.or(actions.get(attempt).or(actions.last()).copied()).unwrap_or("ok");
        let reply = |status: u16, body: String| {
            Ok(http::Response::builder()
                .status(status)
                .header("x-upstream", self.name)
                .body(full(Bytes::from(body)))
                .unwrap())
        };
        match action {
            "ok" => reply(200, format!("{} attempt {}", self.name, attempt + 1)),
            "reset" => Err(std::io::Error::other("scripted reset")),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                reply(200, "late".into())
            }
            size if size.starts_with("size-") => reply(200, "s".repeat(size[5..].parse().unwrap_or(0))),
            slow if slow.starts_with("slow-") => {
                tokio::time::sleep(Duration::from_millis(slow[5..].parse().unwrap_or(100))).await;
                reply(200, format!("{} attempt {}", self.name, attempt + 1))
            }
            grpc if grpc.starts_with("grpc-") => Ok(http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", &grpc[5..])
                .header("x-upstream", self.name)
                .body(full(Bytes::new()))
                .unwrap()),
            after if after.starts_with("after-") => Ok(http::Response::builder()
                .status(503)
                .header("retry-after", &after[6..])
                .header("x-upstream", self.name)
                .body(full(Bytes::from(format!("{} is busy", self.name))))
                .unwrap()),
            "ratelimited" => Ok(http::Response::builder()
                .status(429)
                .header("x-envoy-ratelimited", "true")
                .header("x-upstream", self.name)
                .body(full(Bytes::from(format!("{} limited", self.name))))
                .unwrap()),
            "flagged" => Ok(http::Response::builder()
                .status(200)
                .header("x-retry-me", "yes")
                .header("x-upstream", self.name)
                .body(full(Bytes::from(format!("{} flagged attempt {}", self.name, attempt + 1))))
                .unwrap()),
            code => reply(code.parse().unwrap_or(500), format!("{} said {code}", self.name)),
        }
    }
}
