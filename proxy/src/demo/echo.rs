//! A small echo upstream (HTTP/1.1 and HTTP/2): answers with JSON naming itself and describing the
//! request it saw. `/delay/<ms>` waits first, `/status/<code>` answers with that status,
//! `/bytes/<n>` streams n bytes, and a gRPC request (`content-type: application/grpc`) gets each of
//! its messages echoed back as they arrive, then trailers (`grpc-status` from `x-grpc-status`, else 0).
//! Used by the demo and by the end-to-end tests.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
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

/// Either a whole body or one produced frame by frame.
pub type EchoBody = http_body_util::Either<Full<Bytes>, ChannelBody>;

/// A body fed through a channel, so it streams without being held whole.
#[derive(Debug)]
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn streamed(
    status: StatusCode,
    content_type: &str,
    name: &str,
) -> (tokio::sync::mpsc::Sender<Frame<Bytes>>, Response<EchoBody>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let resp = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-served-by", name)
        .body(http_body_util::Either::Right(ChannelBody(rx)))
        .expect("valid echo response");
    (tx, resp)
}

async fn echo(name: &str, req: Request<Incoming>) -> Response<EchoBody> {
    if req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")) {
        return grpc_echo(name, req);
    }
    if let Some(n) = req.uri().path().strip_prefix("/bytes/").and_then(|s| s.parse::<usize>().ok()) {
        let (tx, resp) = streamed(StatusCode::OK, "application/octet-stream", name);
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let mut left = n;
            while left > 0 {
                let take = left.min(chunk.len());
                if tx.send(Frame::data(chunk.slice(..take))).await.is_err() {
                    return;
                }
                left -= take;
            }
        });
        return resp;
    }
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
        .body(http_body_util::Either::Left(Full::new(Bytes::from(format!("{json}\n")))))
        .expect("valid echo response")
}

fn grpc_echo(name: &str, req: Request<Incoming>) -> Response<EchoBody> {
    let grpc_status = req.headers().get("x-grpc-status").cloned().unwrap_or(http::HeaderValue::from_static("0"));
    let (tx, resp) = streamed(StatusCode::OK, "application/grpc", name);
    let mut body = req.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data()
                && tx.send(Frame::data(data)).await.is_err()
            {
                return;
            }
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", grpc_status);
        trailers.insert("grpc-message", http::HeaderValue::from_static("echoed"));
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    resp
}
