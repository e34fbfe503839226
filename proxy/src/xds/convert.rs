//! Shared conversion helpers: config errors with field paths, durations, addresses, header options,
//! string matchers, data sources and HTTP/2 protocol options.

use crate::routing::matcher::{StringMatch, StringMatcher, full_match_regex};
use crate::routing::{AppendAction, HeaderAdd, HeaderMutation};
use http::{HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::time::Duration;
use xds_proto::pb::envoy::config::core::v3 as core;
use xds_proto::pb::envoy::r#type::matcher::v3 as matcher;
use xds_proto::pb::google::protobuf;

/// One problem in a config document: where (a field path) and what.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into() }
    }

    /// Prefixes the path with the enclosing resource's path.
    pub fn within(mut self, outer: &str) -> Self {
        self.path = if self.path.is_empty() { outer.to_string() } else { format!("{outer}.{}", self.path) };
        self
    }

    pub fn from_document(e: xds_proto::DocumentError) -> Self {
        match e {
            xds_proto::DocumentError::Invalid { path, message } => ConfigError { path, message },
            other => ConfigError::new("", other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, ConfigError>;

pub fn duration(d: &protobuf::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// A timeout field where absent means `default` and zero means disabled.
pub fn timeout(d: Option<&protobuf::Duration>, default: Option<Duration>) -> Option<Duration> {
    match d.map(duration) {
        None => default,
        Some(Duration::ZERO) => None,
        Some(d) => Some(d),
    }
}

pub fn socket_address(addr: Option<&core::Address>, path: &str) -> Result<SocketAddr> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier;
    let Some(addr) = addr.and_then(|a| a.address.as_ref()) else {
        return Err(ConfigError::new(path, "an address is required"));
    };
    let A::SocketAddress(sa) = addr else {
        return Err(ConfigError::new(path, "only socket_address is supported"));
    };
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(ConfigError::new(format!("{path}.socket_address.protocol"), "only TCP is supported"));
    }
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) if p <= u32::from(u16::MAX) => p as u16,
        Some(PortSpecifier::PortValue(p)) => {
            return Err(ConfigError::new(format!("{path}.socket_address.port_value"), format!("{p} is not a port")));
        }
        Some(PortSpecifier::NamedPort(_)) => {
            return Err(ConfigError::new(format!("{path}.socket_address.named_port"), "named ports are not supported"));
        }
        None => 0,
    };
    let ip = sa.address.parse().map_err(|_| {
        ConfigError::new(format!("{path}.socket_address.address"), format!("'{}' is not an IP address", sa.address))
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// `CidrRange` -> [`CidrRange`](crate::net::CidrRange).
pub fn cidr_range(r: &core::CidrRange) -> Result<crate::net::CidrRange> {
    let prefix = r
        .address_prefix
        .parse()
        .map_err(|_| ConfigError::new("address_prefix", format!("'{}' is not an IP address", r.address_prefix)))?;
    let len = r.prefix_len.map_or(0, |l| l.value);
    crate::net::CidrRange::new(prefix, len).map_err(|e| ConfigError::new("prefix_len", e))
}

pub fn string_matcher(m: &matcher::StringMatcher, path: &str) -> Result<StringMatcher> {
    use matcher::string_matcher::MatchPattern as P;
    let kind = match &m.match_pattern {
        Some(P::Exact(s)) => StringMatch::Exact(s.clone()),
        Some(P::Prefix(s)) => StringMatch::Prefix(s.clone()),
        Some(P::Suffix(s)) => StringMatch::Suffix(s.clone()),
        Some(P::Contains(s)) => StringMatch::Contains(s.clone()),
        Some(P::SafeRegex(r)) => StringMatch::Regex(regex(r, &format!("{path}.safe_regex"))?),
        Some(P::Custom(_)) => {
            return Err(ConfigError::new(format!("{path}.custom"), "custom string matchers are not supported"));
        }
        None => return Err(ConfigError::new(path, "a match pattern is required")),
    };
    Ok(StringMatcher { kind, ignore_case: m.ignore_case })
}

pub fn regex(r: &matcher::RegexMatcher, path: &str) -> Result<regex::Regex> {
    full_match_regex(&r.regex).map_err(|e| ConfigError::new(format!("{path}.regex"), format!("invalid regex: {e}")))
}

pub fn unanchored_regex(pattern: &str, path: &str) -> Result<regex::Regex> {
    regex::Regex::new(pattern).map_err(|e| ConfigError::new(format!("{path}.regex"), format!("invalid regex: {e}")))
}

pub fn header_name(name: &str, path: &str) -> Result<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::new(path, format!("'{name}' is not a valid header name")))
}

/// `*_headers_to_add` and `*_headers_to_remove` of one level.
pub fn header_mutation(
    add: &[core::HeaderValueOption],
    remove: &[String],
    path: &str,
    kind: &str,
) -> Result<HeaderMutation> {
    let mut out = HeaderMutation::default();
    for (i, opt) in add.iter().enumerate() {
        let at = format!("{path}.{kind}_headers_to_add[{i}]");
        let Some(h) = &opt.header else {
            return Err(ConfigError::new(at, "header is required"));
        };
        if h.key.starts_with(':') || h.key.eq_ignore_ascii_case("host") {
            return Err(ConfigError::new(format!("{at}.header.key"), ":-prefixed or host headers may not be modified"));
        }
        let name = header_name(&h.key, &format!("{at}.header.key"))?;
        if name == http::header::HOST {
            return Err(ConfigError::new(format!("{at}.header.key"), ":-prefixed or host headers may not be modified"));
        }
        let raw = if h.raw_value.is_empty() { h.value.as_bytes().to_vec() } else { h.raw_value.clone() };
        if raw.contains(&b'%') {
            let text = String::from_utf8_lossy(&raw);
            if text.replace("%%", "").contains('%') {
                return Err(ConfigError::new(
                    format!("{at}.header.value"),
                    "header value formatters (%...%) are not supported; write %% for a literal %",
                ));
            }
        }
        let literal = String::from_utf8_lossy(&raw).replace("%%", "%");
        let value = HeaderValue::from_str(&literal)
            .map_err(|_| ConfigError::new(format!("{at}.header.value"), "not a valid header value"))?;
        #[allow(deprecated)]
        let action = match (opt.append, opt.append_action) {
            (Some(protobuf::BoolValue { value: true }), _) => AppendAction::AppendIfExistsOrAdd,
            (Some(protobuf::BoolValue { value: false }), _) => AppendAction::OverwriteIfExistsOrAdd,
            (None, 0) => AppendAction::AppendIfExistsOrAdd,
            (None, 1) => AppendAction::AddIfAbsent,
            (None, 2) => AppendAction::OverwriteIfExistsOrAdd,
            (None, 3) => AppendAction::OverwriteIfExists,
            (None, n) => return Err(ConfigError::new(format!("{at}.append_action"), format!("unknown value {n}"))),
        };
        out.add.push(HeaderAdd { name, value, action, keep_empty_value: opt.keep_empty_value });
    }
    for (i, name) in remove.iter().enumerate() {
        let at = format!("{path}.{kind}_headers_to_remove[{i}]");
        if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            return Err(ConfigError::new(at, ":-prefixed or host headers may not be removed"));
        }
        let n = header_name(name, &at)?;
        out.remove.push(n);
    }
    Ok(out)
}

/// An inline or file `DataSource`.
pub fn data_source(ds: &core::DataSource, path: &str) -> Result<bytes::Bytes> {
    use core::data_source::Specifier as S;
    match &ds.specifier {
        Some(S::InlineString(s)) => Ok(bytes::Bytes::from(s.clone())),
        Some(S::InlineBytes(b)) => Ok(bytes::Bytes::from(b.clone())),
        Some(S::Filename(f)) => std::fs::read(f)
            .map(bytes::Bytes::from)
            .map_err(|e| ConfigError::new(format!("{path}.filename"), format!("cannot read '{f}': {e}"))),
        Some(S::EnvironmentVariable(v)) => std::env::var(v)
            .map(bytes::Bytes::from)
            .map_err(|_| ConfigError::new(format!("{path}.environment_variable"), format!("'{v}' is not set"))),
        None => Ok(bytes::Bytes::new()),
    }
}

/// Decodes a `typed_config` `Any` as `T`, checking its type URL.
pub fn unpack<T: prost::Message + prost::Name + Default>(any: &protobuf::Any, path: &str) -> Result<T> {
    if any.type_url != T::type_url() {
        return Err(ConfigError::new(
            format!("{path}.typed_config"),
            format!("expected {} but got {}", T::type_url(), any.type_url),
        ));
    }
    T::decode(any.value.as_slice())
        .map_err(|e| ConfigError::new(format!("{path}.typed_config"), format!("cannot decode: {e}")))
}

/// `Http2ProtocolOptions` at `path`, refused outside Envoy's ranges (streams 1..2^31-1, windows
/// 65535..2^31-1).
pub fn http2_options(h2: &core::Http2ProtocolOptions, path: &str) -> Result<crate::http::Http2Options> {
    const MAX: u32 = i32::MAX as u32;
    let within = |value: Option<u32>, field: &str, min: u32| match value {
        Some(v) if !(min..=MAX).contains(&v) => {
            Err(ConfigError::new(format!("{path}.{field}"), format!("must be in {min}..{MAX}")))
        }
        v => Ok(v),
    };
    Ok(crate::http::Http2Options {
        max_concurrent_streams: within(h2.max_concurrent_streams.map(|v| v.value), "max_concurrent_streams", 1)?,
        initial_stream_window: within(
            h2.initial_stream_window_size.map(|v| v.value),
            "initial_stream_window_size",
            65_535,
        )?,
        initial_connection_window: within(
            h2.initial_connection_window_size.map(|v| v.value),
            "initial_connection_window_size",
            65_535,
        )?,
    })
}
