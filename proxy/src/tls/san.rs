//! Subject alternative names: read from a certificate, and matched as Envoy's
//! `match_typed_subject_alt_names` does (any matcher matching any SAN of its type accepts).

use crate::routing::matcher::StringMatcher;
use rustls::pki_types::CertificateDer;
use std::net::IpAddr;
use x509_parser::extensions::GeneralName;

/// A certificate's SANs by type.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl SubjectAltNames {
    pub fn of(cert: &CertificateDer<'_>) -> Result<SubjectAltNames, String> {
        let (_, parsed) =
            x509_parser::parse_x509_certificate(cert).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let mut out = SubjectAltNames::default();
        let Some(ext) = parsed.subject_alternative_name().map_err(|e| format!("bad subjectAltName: {e}"))? else {
            return Ok(out);
        };
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => out.dns.push(d.to_string()),
                GeneralName::URI(u) => out.uris.push(u.to_string()),
                GeneralName::RFC822Name(e) => out.emails.push(e.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        out.ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        out.ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Which SANs a matcher looks at (`SubjectAltNameMatcher.san_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    Dns,
    Uri,
    Email,
    IpAddress,
}

/// One `SubjectAltNameMatcher`.
#[derive(Debug, Clone)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: StringMatcher,
}

impl SanMatcher {
    pub fn matches(&self, sans: &SubjectAltNames) -> bool {
        match self.san_type {
            SanType::Dns => sans.dns.iter().any(|d| self.matches_dns(d)),
            SanType::Uri => sans.uris.iter().any(|u| self.matcher.matches(u)),
            SanType::Email => sans.emails.iter().any(|e| self.matcher.matches(e)),
            SanType::IpAddress => sans.ips.iter().any(|ip| self.matcher.matches(&ip.to_string())),
        }
    }

    /// A DNS SAN `*.example.com` matches an exact matcher for any one-label name under it, as Envoy's.
    fn matches_dns(&self, dns: &str) -> bool {
        use crate::routing::matcher::StringMatch;
        self.matcher.matches(dns)
            || matches!(&self.matcher.kind, StringMatch::Exact(wanted) if dns.starts_with("*.")
                && super::server::dns_covers(dns, wanted))
    }
}

/// Whether a peer certificate passes the matchers (none configured: any does).
pub fn accepted(matchers: &[SanMatcher], cert: &CertificateDer<'_>) -> Result<(), String> {
    if matchers.is_empty() {
        return Ok(());
    }
    let sans = SubjectAltNames::of(cert)?;
    if matchers.iter().any(|m| m.matches(&sans)) {
        return Ok(());
    }
    let shown = sans.uris.iter().chain(&sans.dns).cloned().collect::<Vec<_>>().join(", ");
    Err(format!("certificate SANs [{shown}] match none of the configured subject alt name matchers"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::matcher::StringMatch;

    fn exact(t: SanType, s: &str) -> SanMatcher {
        SanMatcher { san_type: t, matcher: StringMatcher { kind: StringMatch::Exact(s.into()), ignore_case: false } }
    }

    #[test]
    fn matchers_look_at_their_san_type_and_wildcards() {
        let sans = SubjectAltNames {
            dns: vec!["*.example.com".into()],
            uris: vec!["spiffe://cluster.local/ns/a/sa/b".into()],
            ..Default::default()
        };
        assert!(exact(SanType::Uri, "spiffe://cluster.local/ns/a/sa/b").matches(&sans));
        assert!(!exact(SanType::Dns, "spiffe://cluster.local/ns/a/sa/b").matches(&sans), "a URI is not a DNS SAN");
        assert!(exact(SanType::Dns, "api.example.com").matches(&sans));
        assert!(!exact(SanType::Dns, "a.b.example.com").matches(&sans), "one label only");
        assert!(!exact(SanType::Dns, "example.com").matches(&sans));
    }
}
