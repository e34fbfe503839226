//! DNS discovery for STRICT_DNS and LOGICAL_DNS clusters: resolves each endpoint's name with the
//! system resolver and replaces the cluster's endpoint set when the answer changes.

use super::{Cluster, Discovery, DnsFamily, Member};
use std::net::{IpAddr, SocketAddr};

/// Resolves every endpoint of the cluster once and applies the result. A name that fails to resolve
/// keeps the cluster's current addresses for it (as Envoy keeps its last good answer).
pub(super) async fn refresh(cluster: &Cluster) {
    let config = &cluster.config;
    let current = cluster.endpoints();
    let mut next = Vec::new();
    for spec in &config.endpoints {
        let resolved = match tokio::net::lookup_host((spec.host.as_str(), spec.port)).await {
            Ok(addrs) => filter_family(addrs.collect(), config.dns_family),
            Err(e) => {
                tracing::warn!(cluster = %config.name, host = %spec.host, error = %e, "DNS resolution failed; keeping the last addresses");
                return;
            }
        };
        if resolved.is_empty() {
            tracing::warn!(cluster = %config.name, host = %spec.host, family = ?config.dns_family, "DNS returned no address of the requested family");
        }
        let take = if config.discovery == Discovery::LogicalDns { 1 } else { usize::MAX };
        for addr in resolved.into_iter().take(take) {
            if !next.iter().any(|m: &Member| m.addr == addr) {
                next.push(spec.member(addr));
            }
        }
        if config.discovery == Discovery::LogicalDns {
            break;
        }
    }
    drop(current);
    cluster.update_endpoints(next);
}

fn filter_family(addrs: Vec<SocketAddr>, family: DnsFamily) -> Vec<SocketAddr> {
    let (v4, v6): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| matches!(a.ip(), IpAddr::V4(_)));
    match family {
        DnsFamily::V4Only => v4,
        DnsFamily::V6Only => v6,
        DnsFamily::Auto if !v6.is_empty() => v6,
        DnsFamily::Auto => v4,
        DnsFamily::V4Preferred if !v4.is_empty() => v4,
        DnsFamily::V4Preferred => v6,
        DnsFamily::All => v4.into_iter().chain(v6).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_families() {
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(filter_family(vec![v4, v6], DnsFamily::Auto), vec![v6]);
        assert_eq!(filter_family(vec![v4], DnsFamily::Auto), vec![v4]);
        assert_eq!(filter_family(vec![v4, v6], DnsFamily::V4Preferred), vec![v4]);
        assert_eq!(filter_family(vec![v6], DnsFamily::V4Only), Vec::<SocketAddr>::new());
        assert_eq!(filter_family(vec![v6, v4], DnsFamily::All), vec![v4, v6]);
    }
}
