//! Request headers the proxy sets on the way upstream, as Envoy does: `x-forwarded-for`,
//! `x-forwarded-proto`, `x-request-id`, `x-envoy-internal` (and the `x-envoy-*` control headers an
//! external client may not send), and the hop-by-hop headers it removes.

use super::HttpConnectionManager;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");

/// Headers that steer the proxy (retries, timeouts, tracing): honoured from internal requests only,
/// removed from any other (Envoy's list).
const INTERNAL_ONLY: [&str; 14] = [
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
];

/// Headers removed from an edge proxy's external requests only (Envoy's list).
const EDGE_STRIPPED: [&str; 3] =
    ["x-envoy-decorator-operation", "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node"];

/// What the forwarding headers say about a request.
#[derive(Debug)]
pub struct Forwarded {
    pub request_id: Option<HeaderValue>,
    /// Sent from inside the mesh: `x-forwarded-for` holds one address, within
    /// `internal_address_config` (none by default, as in Envoy 1.40). Such a request may steer the
    /// proxy with `x-envoy-*` headers.
    pub internal: bool,
    /// The client address the proxy trusts: the peer, or with `xff_num_trusted_hops` the address
    /// that many hops back in `x-forwarded-for` (RBAC's `remote_ip`).
    pub client: std::net::IpAddr,
}

/// Sets the forwarding headers as Envoy's connection manager does before routing. `scheme` is the
/// downstream connection's (`http` until TLS arrives).
pub fn apply(
    hcm: &HttpConnectionManager,
    headers: &mut HeaderMap,
    peer: SocketAddr,
    scheme: &'static str,
) -> Forwarded {
    let edge = hcm.use_remote_address;
    // The trusted client: the peer, or with xff_num_trusted_hops N the Nth address from the right of
    // the x-forwarded-for the peer sent.
    let client = if hcm.xff_num_trusted_hops > 0 { nth_from_right(headers, hcm.xff_num_trusted_hops) } else { None };
    let client = client.unwrap_or(peer.ip());
    // Envoy's internal request: one address only (an edge proxy's peer with no x-forwarded-for, or
    // else the one address of x-forwarded-for), and within `internal_address_config`.
    let internal = !hcm.internal_addresses.is_empty() && {
        let sole =
            if edge { (!headers.contains_key(&X_FORWARDED_FOR)).then_some(peer.ip()) } else { single_xff(headers) };
        sole.is_some_and(|ip| hcm.xff_num_trusted_hops == 0 && hcm.internal_addresses.iter().any(|r| r.contains(ip)))
    };
    if edge && !hcm.skip_xff_append {
        // As Envoy: a loopback peer is recorded as this host's own address.
        append_xff(headers, if peer.ip().is_loopback() { host_address(peer.ip()) } else { peer.ip() });
    }
    let external = edge && !internal;
    if internal {
        headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    } else if has_envoy_headers(headers) {
        headers.remove(&X_ENVOY_INTERNAL);
        remove_control_headers(headers);
        // What an edge proxy's client may not claim about where it comes from.
        if edge {
            for name in EDGE_STRIPPED {
                headers.remove(name);
            }
        }
    }
    if edge {
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
    Forwarded { request_id: headers.get(&X_REQUEST_ID).cloned(), internal, client }
}

/// The address of an `x-forwarded-for` holding exactly one.
fn single_xff(headers: &HeaderMap) -> Option<IpAddr> {
    let mut values = headers.get_all(&X_FORWARDED_FOR).iter();
    let (Some(only), None) = (values.next(), values.next()) else { return None };
    only.to_str().ok().filter(|v| !v.contains(',')).and_then(|v| v.trim().parse().ok())
}

/// This host's address of `like`'s family: the source address of its route to the outside (no
/// packet is sent), or `like` itself without one. Found once.
fn host_address(like: IpAddr) -> IpAddr {
    static V4: OnceLock<Option<IpAddr>> = OnceLock::new();
    static V6: OnceLock<Option<IpAddr>> = OnceLock::new();
    let (cell, bind, probe) = match like {
        IpAddr::V4(_) => (&V4, "0.0.0.0:0", "192.0.2.1:9"),
        IpAddr::V6(_) => (&V6, "[::]:0", "[2001:db8::1]:9"),
    };
    let found = cell.get_or_init(|| {
        let socket = std::net::UdpSocket::bind(bind).ok()?;
        socket.connect(probe).ok()?;
        Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
    });
    found.unwrap_or(like)
}

/// Whether any `x-envoy-*` header came with the request (most carry none: one pass over the names).
pub fn has_envoy_headers(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| k.as_str().starts_with("x-envoy-"))
}

/// Removes the internal-only control headers (once read: the upstream never sees them).
pub fn remove_control_headers(headers: &mut HeaderMap) {
    for name in INTERNAL_ONLY {
        headers.remove(name);
    }
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
        // A copy of the value shares its bytes; a name is looked up without an allocation.
        if let Some(conn) = headers.get(header::CONNECTION).and_then(|v| v.to_str().ok().map(|_| v.clone())) {
            let names = conn.to_str().unwrap_or_default().split(',').map(str::trim);
            for name in names.filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case("te")) {
                headers.remove(name);
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
        // Names in the Connection header are matched whatever their case; TE is never dropped by it.
        h.insert(header::CONNECTION, "Keep-Alive, X-Secret,TE".parse().unwrap());
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
