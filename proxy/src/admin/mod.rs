//! The admin server (127.0.0.1 by default): `/ready`, `/live`, `/stats/prometheus`, `/config_dump`,
//! `/clusters`, and `POST /quitquitquit`. Runs on the control runtime, apart from the data plane.

mod dump;

use crate::snapshot::SharedSnapshot;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub shared: SharedSnapshot,
    /// True once listeners are bound and the first config is applied.
    pub ready: Arc<AtomicBool>,
    /// Cancelled by `/quitquitquit`: the process drains and exits.
    pub quit: CancellationToken,
    /// ADS versions and rejections, when config comes from a control plane.
    pub ads: Option<crate::ads::SharedStatus>,
}

/// Binds the admin address and serves it until `stop` is cancelled.
pub async fn serve(addr: SocketAddr, state: AdminState, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "admin listening");
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(req, &state)) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(local)
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid admin response")
}

fn route(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") => {
            if state.ready.load(Ordering::Acquire) && !state.quit.is_cancelled() {
                text(StatusCode::OK, "text/plain", "LIVE\n")
            } else if state.quit.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "PRE_INITIALIZING\n")
            }
        }
        (&Method::GET, "/live") => text(StatusCode::OK, "text/plain", "LIVE\n"),
        (&Method::GET, "/stats/prometheus") => {
            text(StatusCode::OK, "text/plain; version=0.0.4", crate::telemetry::prometheus().render())
        }
        (&Method::GET, "/config_dump") => {
            let ads = state.ads.as_ref().map(|a| a.lock().unwrap_or_else(|e| e.into_inner()).clone());
            match dump::config_dump(&state.shared.load(), ads.as_ref()) {
                Ok(json) => text(StatusCode::OK, "application/json", json),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e),
            }
        }
        (&Method::GET, "/clusters") => {
            let snapshot = state.shared.load();
            if query.split('&').any(|p| p == "format=json") {
                text(StatusCode::OK, "application/json", dump::clusters_json(&snapshot))
            } else {
                text(StatusCode::OK, "text/plain", dump::clusters_text(&snapshot))
            }
        }
        (&Method::POST, "/quitquitquit") => {
            state.quit.cancel();
            text(StatusCode::OK, "text/plain", "OK\n")
        }
        (_, "/") => text(
            StatusCode::OK,
            "text/plain",
            "admin commands are:\n  /ready\n  /live\n  /stats/prometheus\n  /config_dump\n  /clusters\n  POST /quitquitquit\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "invalid path; try /\n"),
    }
}
