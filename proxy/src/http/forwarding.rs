//! Request headers the proxy sets on the way upstream, as Envoy does: `x-forwarded-for`,
//! `x-forwarded-proto`, `x-request-id`, and the hop-by-hop headers it removes.

use super::HttpConnectionManager;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use std::net::SocketAddr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Envoy's internal addresses for `use_remote_address` (loopback and RFC 1918).
fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Sets the forwarding headers as Envoy's connection manager does before routing. `scheme` is the
/// downstream connection's (`http` until TLS arrives). Returns the request id, if any.
pub fn apply(
    hcm: &HttpConnectionManager,
    headers: &mut HeaderMap,
    peer: SocketAddr,
    scheme: &'static str,
) -> Option<HeaderValue> {
    let edge = hcm.use_remote_address;
    // The trusted client: the peer, or with xff_num_trusted_hops N the Nth address from the right of
    // the x-forwarded-for the peer sent.
    let client = if hcm.xff_num_trusted_hops > 0 { nth_from_right(headers, hcm.xff_num_trusted_hops) } else { None };
    let client = client.unwrap_or(peer.ip());
    let external = edge && !is_internal(client);
    if edge {
        if !hcm.skip_xff_append {
            append_xff(headers, peer.ip());
        }
        if external {
            if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
            }
        } else {
            headers.remove(&X_ENVOY_EXTERNAL_ADDRESS);
        }
    }
    if edge || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    }
    if hcm.generate_request_id {
        let reset = external && !hcm.preserve_external_request_id;
        if reset || !headers.contains_key(&X_REQUEST_ID) {
            let id = uuid::Uuid::new_v4();
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let text = id.hyphenated().encode_lower(&mut buf);
            headers.insert(X_REQUEST_ID.clone(), HeaderValue::from_str(text).expect("a UUID is a valid header value"));
        }
    }
    headers.get(&X_REQUEST_ID).cloned()
}

/// The `n`th address (1-based) from the right of `x-forwarded-for`.
fn nth_from_right(headers: &HeaderMap, n: u32) -> Option<std::net::IpAddr> {
    let all: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let i = all.len().checked_sub(n as usize)?;
    all[i].parse().ok()
}

fn append_xff(headers: &mut HeaderMap, ip: std::net::IpAddr) {
    let ip = ip.to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// Removes hop-by-hop headers (and any header named in `connection`). An upgrade keeps `connection`
/// and `upgrade`, which the upstream needs to see.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // Most messages carry none of them: one pass over the names instead of a lookup per header.
    let present = headers.keys().any(|k| {
        k == header::CONNECTION
            || k == header::TE
            || k == header::TRANSFER_ENCODING
            || k == header::UPGRADE
            || k == KEEP_ALIVE
            || k == PROXY_CONNECTION
    });
    if !present {
        return;
    }
    if !upgrading {
        if let Some(conn) = headers.get(header::CONNECTION).and_then(|v| v.to_str().ok()).map(str::to_string) {
            for name in conn.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    && name != header::TE
                {
                    headers.remove(name);
                }
            }
        }
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(te) = headers.get(header::TE) {
        if te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            return;
        }
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_but_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-app", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none() && h.get("connection").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-app"], "kept");
    }

    #[test]
    fn trusted_hops_count_from_the_right() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.128, 203.0.113.10,203.0.113.1".parse().unwrap());
        assert_eq!(nth_from_right(&h, 1), Some("203.0.113.1".parse().unwrap()));
        assert_eq!(nth_from_right(&h, 3), Some("203.0.113.128".parse().unwrap()));
        assert_eq!(nth_from_right(&h, 4), None);
    }

    #[test]
    fn xff_appends_the_peer() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        append_xff(&mut h, "10.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "1.2.3.4,10.0.0.1");
    }
}
