//! A small echo upstream (HTTP/1.1 and HTTP/2): answers with JSON naming itself and describing the
//! request it saw. `/delay/<ms>` waits first, `/status/<code>` answers with that status. Used by the
//! demo and by the end-to-end tests.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Binds `addr` and serves echo responses as `name` until the runtime stops. Returns the bound address.
pub async fn serve(name: &str, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(echo(&name, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(local)
}

async fn echo(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, Bytes::len),
            Err(_) => break,
        }
    }
    let path = parts.uri.path();
    if let Some(ms) = path.strip_prefix("/delay/").and_then(|s| s.parse::<u64>().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    // Repeated headers are joined with "," so the order of values stays visible.
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<String> =
            parts.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        headers.insert(name.to_string(), values.join(",").into());
    }
    let json = serde_json::json!({
        "service": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "authority": parts.uri.authority().map(|a| a.to_string()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-served-by", name)
        .body(Full::new(Bytes::from(format!("{json}\n"))))
        .expect("valid echo response")
}
