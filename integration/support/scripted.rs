//! A scripted upstream: each request says, in `x-script`, what its attempts get (`503,reset,ok`:
//! the first attempt a 503, the second a reset connection, the third and later a 200), and carries
//! an `x-test-id` that groups its attempts. Actions: a status code, `ok`, `reset` (the connection
//! closes with no response), `hang` (no answer for 30 s), `grpc-N` (a trailers-only gRPC answer with
//! status N). Every attempt is recorded: when it came and how many body bytes it carried.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One attempt as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub body_bytes: usize,
}

/// A running scripted upstream.
#[derive(Clone)]
pub struct Scripted {
    pub addr: SocketAddr,
    pub name: &'static str,
    /// One action for every request, whatever its script says.
    fixed: Option<&'static str>,
    seen: Arc<Mutex<HashMap<String, Vec<Seen>>>>,
}

impl Scripted {
    pub async fn start(name: &'static str) -> Scripted {
        Self::start_with(name, None).await
    }

    /// An upstream that answers every request with `action` (e.g. a broken one: `"503"`).
    pub async fn always(name: &'static str, action: &'static str) -> Scripted {
        Self::start_with(name, Some(action)).await
    }

    async fn start_with(name: &'static str, fixed: Option<&'static str>) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scripted = Scripted { addr, name, fixed, seen: Arc::default() };
        let server = scripted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| server.clone().answer(req));
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        scripted
    }

    /// The attempts that came for a test id.
    pub fn attempts(&self, id: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().get(id).cloned().unwrap_or_default()
    }

    async fn answer(
        self,
        req: http::Request<hyper::body::Incoming>,
    ) -> Result<http::Response<Full<Bytes>>, std::io::Error> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let (id, script) = (header("x-test-id"), header("x-script"));
        let body_bytes = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
        let attempt = {
            let mut seen = self.seen.lock().unwrap();
            let list = seen.entry(id).or_default();
            list.push(Seen { at: Instant::now(), body_bytes });
            list.len() - 1
        };
        let actions: Vec<&str> = script.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
        let action = self.fixed.or(actions.get(attempt).or(actions.last()).copied()).unwrap_or("ok");
        let reply = |status: u16, body: String| {
            Ok(http::Response::builder()
                .status(status)
                .header("x-upstream", self.name)
                .body(Full::new(Bytes::from(body)))
                .unwrap())
        };
        match action {
            "ok" => reply(200, format!("{} attempt {}", self.name, attempt + 1)),
            "reset" => Err(std::io::Error::other("scripted reset")),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                reply(200, "late".into())
            }
            grpc if grpc.starts_with("grpc-") => Ok(http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", &grpc[5..])
                .header("x-upstream", self.name)
                .body(Full::new(Bytes::new()))
                .unwrap()),
            code => reply(code.parse().unwrap_or(500), format!("{} said {code}", self.name)),
        }
    }
}
