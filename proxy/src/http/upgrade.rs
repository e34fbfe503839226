//! HTTP/1.1 Upgrade (WebSocket) tunnels: once the upstream answers 101, both upgraded connections are
//! spliced together byte for byte, each half closed when its side finishes.

use super::proxy::ResponseBody;
use super::timeout_body::TimedBody;
use crate::upstream::pool::PooledBody;
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The upgrade a request asks for (`connection: upgrade` + `upgrade: X`), lowercased.
pub fn requested<B>(req: &Request<B>) -> Option<String> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let connection = req.headers().get(header::CONNECTION)?.to_str().ok()?;
    if !connection.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")) {
        return None;
    }
    let kind = req.headers().get(header::UPGRADE)?.to_str().ok()?;
    Some(kind.trim().to_ascii_lowercase())
}

/// Passes the upstream's 101 downstream and splices the two connections once both have upgraded.
pub fn splice(downstream: OnUpgrade, mut upstream_resp: Response<Incoming>) -> Response<ResponseBody> {
    if upstream_resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return refused(upstream_resp);
    }
    let upstream = hyper::upgrade::on(&mut upstream_resp);
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded tunnel closed with an error");
        }
    });
    let (parts, _) = upstream_resp.into_parts();
    Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
}

/// An upgrade answered without switching protocols: passed on as an ordinary response.
pub fn refused(resp: Response<Incoming>) -> Response<ResponseBody> {
    resp.map(|b| Either::Left(TimedBody::unlimited(PooledBody::unpooled(b))))
}
