//! The floor of an HTTP proxy built on hyper and tokio, as Strait is: one current-thread runtime,
//! a hyper server connection per client connection (HTTP/2 when it opens with the HTTP/2 preface,
//! each stream its own task, else HTTP/1.1), requests forwarded on pooled HTTP/1.1 hyper client
//! connections (each driven by its own task) to one upstream, and nothing else: no routing,
//! headers, stats, timeouts or policies. `benches/compare.py` runs it beside Strait, so that what
//! Strait costs above it is its own logic, and what it costs up to it is the framework's.
//!
//!   hyper-floor LISTEN_ADDR UPSTREAM_ADDR

use anyhow::Context;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

/// What the HTTP/2 server runs its streams on: tasks on this thread's `LocalSet`.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// Idle upstream connections, reused last in, first out (one runtime thread: no lock).
type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

async fn forward(pool: Pool, upstream: SocketAddr, req: Request<Incoming>) -> anyhow::Result<Response<Incoming>> {
    // The last connection given back, once it can take a request (its previous response's body
    // may still be on the way); a new one when none is left.
    let mut idle = pool.borrow_mut().pop();
    let ready = match idle.as_mut() {
        Some(sender) => sender.ready().await.is_ok(),
        None => false,
    };
    let mut sender = match idle {
        Some(sender) if ready => sender,
        _ => {
            let stream = tokio::net::TcpStream::connect(upstream).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::task::spawn_local(connection);
            sender
        }
    };
    let (mut parts, body) = req.into_parts();
    // An HTTP/2 request names its host in the URI (`:authority`); HTTP/1.1 needs a `Host` header.
    if let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(hyper::header::HOST)
    {
        parts.headers.insert(hyper::header::HOST, authority.as_str().parse()?);
    }
    parts.uri = parts.uri.path_and_query().map_or_else(|| "/".parse(), |p| p.as_str().parse())?;
    let response = sender.send_request(Request::from_parts(parts, body)).await?;
    // Given back once the response head is in: a request taking it before the body has been read
    // waits for it above (at most one can, since it is then out of the pool).
    pool.borrow_mut().push(sender);
    Ok(response)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream] = args.as_slice() else { anyhow::bail!("usage: hyper-floor LISTEN_ADDR UPSTREAM_ADDR") };
    let listen: SocketAddr = listen.parse().context("listen address")?;
    let upstream: SocketAddr = upstream.parse().context("upstream address")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let pool: Pool = Rc::default();
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let service = hyper::service::service_fn(move |req| forward(pool.clone(), upstream, req));
                if strait_proxy::http::detect::opens_with_http2_preface(&stream).await {
                    let served = hyper::server::conn::http2::Builder::new(LocalExec)
                        .max_concurrent_streams(1024)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = served.await;
                } else {
                    let served =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    let _ = served.await;
                }
            });
        }
    })
}
