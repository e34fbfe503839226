//! A listener's filter chains and how a connection picks one (`filter_chain_match`), in Envoy's
//! order: destination port, destination IP, server name (SNI), transport protocol, application
//! protocols (ALPN), source IP, source port. At each step the chains that name a matching value
//! win over the ones that leave it open; the most specific value wins (exact server name over
//! `*.`, longer prefix over shorter). Nothing matches: the default chain, else the connection closes.

use super::ListenerKind;
use crate::net::CidrRange;
use crate::policy::local_ratelimit::ConnectionRateLimit;
use crate::tls::inspect::Transport;
use crate::tls::server::ServerTls;
use std::net::SocketAddr;
use std::sync::Arc;

/// A validated `FilterChain`.
#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    pub matcher: ChainMatch,
    /// `transport_socket` `envoy.transport_sockets.tls`: TLS terminated here.
    pub tls: Option<Arc<ServerTls>>,
    pub kind: ListenerKind,
    /// `envoy.filters.network.local_ratelimit` filters ahead of the terminal one, in order.
    pub connection_limits: Vec<ConnectionRateLimit>,
    /// `envoy.filters.network.rbac` filters, checked once the connection's peer is known.
    pub authorization: Vec<crate::policy::rbac::NetworkRbac>,
    /// Where the terminal network filter's config sits in the listener, for error messages.
    pub filter_path: String,
    /// `transport_socket_connect_timeout`: how long the TLS handshake may take (default 10 s).
    pub handshake_timeout: Option<std::time::Duration>,
}

/// A validated `FilterChainMatch` (empty fields match anything).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<CidrRange>,
    /// Lower-case; `*.example.com` matches any name under it.
    pub server_names: Vec<String>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
    pub source_prefix_ranges: Vec<CidrRange>,
    pub source_ports: Vec<u16>,
}

impl ChainMatch {
    /// Whether telling the connection's transport apart is needed (Envoy adds the TLS inspector).
    pub fn needs_inspection(&self) -> bool {
        !self.server_names.is_empty()
            || self.transport_protocol.as_deref() == Some("tls")
            || !self.application_protocols.is_empty()
    }
}

/// What a connection shows before a chain is chosen.
#[derive(Debug)]
pub struct ConnectionFacts<'a> {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub transport: &'a Transport,
}

/// How well one criterion of a chain fits: not set, no match, or a match of some specificity.
enum Fit {
    Open,
    Miss,
    Hit(usize),
}

fn fit_ranges(ranges: &[CidrRange], ip: std::net::IpAddr) -> Fit {
    if ranges.is_empty() {
        return Fit::Open;
    }
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| Fit::Hit(usize::from(r.prefix_len())))
        .max_by_key(hit)
        .unwrap_or(Fit::Miss)
}

fn hit(fit: &Fit) -> usize {
    match fit {
        Fit::Hit(n) => *n,
        _ => 0,
    }
}

fn fit_server_names(names: &[String], sni: Option<&str>) -> Fit {
    if names.is_empty() {
        return Fit::Open;
    }
    let Some(sni) = sni.map(str::to_ascii_lowercase) else { return Fit::Miss };
    names
        .iter()
        .filter_map(|name| match name.strip_prefix('*') {
            // An exact name beats every wildcard; a longer wildcard suffix beats a shorter one.
            None => (name == &sni).then_some(usize::MAX),
            Some(suffix) => (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some(suffix.len()),
        })
        .max()
        .map_or(Fit::Miss, Fit::Hit)
}

/// Keeps the candidates that fit best on one criterion (the ones leaving it open if none names it).
fn narrow(candidates: &mut Vec<&FilterChain>, fit: impl Fn(&ChainMatch) -> Fit) {
    let fits: Vec<Fit> = candidates.iter().map(|c| fit(&c.matcher)).collect();
    let best = fits.iter().filter_map(|f| if let Fit::Hit(n) = f { Some(*n) } else { None }).max();
    let mut i = 0;
    candidates.retain(|_| {
        let keep = match (&fits[i], best) {
            (Fit::Hit(n), Some(b)) => *n == b,
            (Fit::Open, None) => true,
            _ => false,
        };
        i += 1;
        keep
    });
}

/// Picks the chain for a connection: an index into `chains` (whose last one is the default chain
/// when `has_default`), or `None` when nothing matches.
pub fn select(chains: &[FilterChain], has_default: bool, facts: &ConnectionFacts<'_>) -> Option<usize> {
    let matchable = if has_default { &chains[..chains.len().saturating_sub(1)] } else { chains };
    let mut candidates: Vec<&FilterChain> = matchable.iter().collect();
    let (sni, alpn) = match facts.transport {
        Transport::Tls { server_name, alpn } => (server_name.as_deref(), alpn.as_slice()),
        Transport::Raw => (None, &[][..]),
    };
    narrow(&mut candidates, |m| match m.destination_port {
        None => Fit::Open,
        Some(p) if p == facts.local.port() => Fit::Hit(1),
        Some(_) => Fit::Miss,
    });
    narrow(&mut candidates, |m| fit_ranges(&m.prefix_ranges, facts.local.ip()));
    narrow(&mut candidates, |m| fit_server_names(&m.server_names, sni));
    narrow(&mut candidates, |m| match &m.transport_protocol {
        None => Fit::Open,
        Some(t) if t == facts.transport.name() => Fit::Hit(1),
        Some(_) => Fit::Miss,
    });
    narrow(&mut candidates, |m| {
        if m.application_protocols.is_empty() {
            Fit::Open
        } else if m.application_protocols.iter().any(|p| alpn.contains(p)) {
            Fit::Hit(1)
        } else {
            Fit::Miss
        }
    });
    narrow(&mut candidates, |m| fit_ranges(&m.source_prefix_ranges, facts.peer.ip()));
    narrow(&mut candidates, |m| {
        if m.source_ports.is_empty() {
            Fit::Open
        } else if m.source_ports.contains(&facts.peer.port()) {
            Fit::Hit(1)
        } else {
            Fit::Miss
        }
    });
    match candidates.first() {
        Some(chosen) => chains.iter().position(|c| std::ptr::eq(c, *chosen)),
        None => has_default.then(|| chains.len() - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::TcpProxyConfig;

    fn chain(name: &str, matcher: ChainMatch) -> FilterChain {
        FilterChain {
            name: name.into(),
            matcher,
            tls: None,
            kind: ListenerKind::Tcp(Arc::new(TcpProxyConfig {
                stat_prefix: "t".into(),
                target: crate::routing::ClusterTarget::Single("c".into()),
                idle_timeout: None,
                stats: crate::telemetry::TcpStats::new("t"),
            })),
            connection_limits: Vec::new(),
            authorization: Vec::new(),
            filter_path: String::new(),
            handshake_timeout: None,
        }
    }

    fn pick(chains: &[FilterChain], default: bool, sni: Option<&str>, peer: &str) -> Option<String> {
        let transport = match sni {
            Some(name) => Transport::Tls { server_name: Some(name.into()), alpn: vec!["h2".into()] },
            None => Transport::Raw,
        };
        let facts = ConnectionFacts {
            local: "10.0.0.1:443".parse().unwrap(),
            peer: peer.parse().unwrap(),
            transport: &transport,
        };
        select(chains, default, &facts).map(|i| chains[i].name.clone())
    }

    #[test]
    fn the_most_specific_match_wins_in_envoys_order() {
        let names =
            |n: &[&str]| ChainMatch { server_names: n.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        let chains = vec![
            chain("wildcard", names(&["*.example.com"])),
            chain("exact", names(&["api.example.com"])),
            chain("longer-wildcard", names(&["*.eu.example.com"])),
            chain("plain", ChainMatch { transport_protocol: Some("raw_buffer".into()), ..Default::default() }),
            chain("default", ChainMatch::default()),
        ];
        assert_eq!(pick(&chains, true, Some("api.example.com"), "1.1.1.1:1").as_deref(), Some("exact"));
        assert_eq!(pick(&chains, true, Some("shop.example.com"), "1.1.1.1:1").as_deref(), Some("wildcard"));
        assert_eq!(pick(&chains, true, Some("a.eu.example.com"), "1.1.1.1:1").as_deref(), Some("longer-wildcard"));
        assert_eq!(pick(&chains, true, None, "1.1.1.1:1").as_deref(), Some("plain"));
        assert_eq!(pick(&chains, true, Some("other.org"), "1.1.1.1:1").as_deref(), Some("default"));
        assert_eq!(pick(&chains[..4], false, Some("other.org"), "1.1.1.1:1"), None, "no match, no default: closed");

        // A chain naming the destination port beats SNI (the port is looked at first).
        let by_port = vec![
            chain("sni", names(&["api.example.com"])),
            chain("port", ChainMatch { destination_port: Some(443), ..Default::default() }),
        ];
        assert_eq!(pick(&by_port, false, Some("api.example.com"), "1.1.1.1:1").as_deref(), Some("port"));

        // Source ranges: the longest prefix wins; one that does not contain the peer is out.
        let range = |r: &str, len| CidrRange::new(r.parse().unwrap(), len).unwrap();
        let by_source = vec![
            chain("wide", ChainMatch { source_prefix_ranges: vec![range("10.0.0.0", 8)], ..Default::default() }),
            chain("narrow", ChainMatch { source_prefix_ranges: vec![range("10.1.0.0", 16)], ..Default::default() }),
        ];
        assert_eq!(pick(&by_source, false, None, "10.1.2.3:5").as_deref(), Some("narrow"));
        assert_eq!(pick(&by_source, false, None, "10.2.2.3:5").as_deref(), Some("wide"));
        assert_eq!(pick(&by_source, false, None, "192.168.0.1:5"), None);
    }
}
