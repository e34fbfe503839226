//! The virtual-host index: picks a virtual host by authority in Envoy's order (exact, longest `*suffix`,
//! longest `prefix*`, then `*`), case-insensitively.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
pub struct DomainIndex {
    exact: HashMap<String, usize>,
    /// Keyed by suffix length; searched longest first.
    suffixes: BTreeMap<usize, HashMap<String, usize>>,
    prefixes: BTreeMap<usize, HashMap<String, usize>>,
    any: Option<usize>,
}

impl DomainIndex {
    /// Adds `domain` for virtual host `vhost`; an error if the domain is already taken.
    pub fn insert(&mut self, domain: &str, vhost: usize) -> Result<(), String> {
        let domain = domain.to_ascii_lowercase();
        let taken = if domain == "*" {
            self.any.replace(vhost).is_some()
        } else if let Some(suffix) = domain.strip_prefix('*') {
            self.suffixes.entry(suffix.len()).or_default().insert(suffix.to_string(), vhost).is_some()
        } else if let Some(prefix) = domain.strip_suffix('*') {
            self.prefixes.entry(prefix.len()).or_default().insert(prefix.to_string(), vhost).is_some()
        } else {
            if domain.is_empty() {
                return Err("a domain must not be empty".into());
            }
            self.exact.insert(domain.clone(), vhost).is_some()
        };
        if taken { Err(format!("domain '{domain}' is used by more than one virtual host")) } else { Ok(()) }
    }

    pub fn find(&self, host: &str) -> Option<usize> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        // A wildcard never matches the empty string: the host must be longer than the fixed part.
        for (&len, map) in self.suffixes.iter().rev() {
            if host.len() > len
                && let Some(&i) = host.get(host.len() - len..).and_then(|tail| map.get(tail))
            {
                return Some(i);
            }
        }
        for (&len, map) in self.prefixes.iter().rev() {
            if host.len() > len
                && let Some(&i) = host.get(..len).and_then(|head| map.get(head))
            {
                return Some(i);
            }
        }
        self.any
    }
}

/// Removes a `:port` from an authority (`[v6]:port` included).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.rfind("]:") {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_search_order() {
        let mut d = DomainIndex::default();
        d.insert("www.example.com", 0).unwrap();
        d.insert("*.example.com", 1).unwrap();
        d.insert("*-api.example.com", 2).unwrap();
        d.insert("www.*", 3).unwrap();
        d.insert("*", 4).unwrap();
        assert_eq!(d.find("WWW.Example.com"), Some(0));
        assert_eq!(d.find("a.example.com"), Some(1));
        assert_eq!(d.find("pay-api.example.com"), Some(2));
        assert_eq!(d.find("www.other.org"), Some(3));
        assert_eq!(d.find("example.com"), Some(4));
        assert_eq!(d.find(".example.com"), Some(4), "the wildcard must match at least one character");
        assert_eq!(d.find("www.example.com:80"), Some(3), "the port is part of the authority");
        assert!(d.insert("*.EXAMPLE.com", 9).is_err());
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a.com:8080"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
