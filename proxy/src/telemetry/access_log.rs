//! Access logs in Envoy's format language (`%REQ(X)%`, `%RESPONSE_FLAGS%`, ...), written to stdout or a
//! file by a background thread so a slow disk never blocks a worker.

use http::HeaderMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// Envoy's default access-log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    StartTime,
    Request { names: Vec<String>, max_len: Option<usize> },
    Response { names: Vec<String>, max_len: Option<usize> },
    Protocol,
    ResponseCode,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RouteName,
    DownstreamPeerUriSan,
    DownstreamPeerSubject,
    DownstreamTlsVersion,
    RequestedServerName,
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq)]
pub struct LogFormat(Vec<Segment>);

impl LogFormat {
    pub fn parse(format: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = format;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                segments.push(Segment::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 1..];
            if let Some(stripped) = after.strip_prefix('%') {
                segments.push(Segment::Literal("%".into()));
                rest = stripped;
                continue;
            }
            let end = after.find('%').ok_or_else(|| format!("unterminated command operator in '{format}'"))?;
            segments.push(parse_operator(&after[..end])?);
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_string()));
        }
        Ok(LogFormat(segments))
    }
}

fn parse_operator(op: &str) -> Result<Segment, String> {
    let (op, max_len) = match op.rsplit_once("):") {
        Some((head, len)) => {
            (format!("{head})"), Some(len.parse::<usize>().map_err(|_| format!("bad length in %{op}%"))?))
        }
        None => (op.to_string(), None),
    };
    let headers = |inner: &str| inner.split('?').map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>();
    if let Some(inner) = op.strip_prefix("REQ(").and_then(|s| s.strip_suffix(')')) {
        return Ok(Segment::Request { names: headers(inner), max_len });
    }
    if let Some(inner) = op.strip_prefix("RESP(").and_then(|s| s.strip_suffix(')')) {
        return Ok(Segment::Response { names: headers(inner), max_len });
    }
    Ok(match op.as_str() {
        "START_TIME" => Segment::StartTime,
        "PROTOCOL" => Segment::Protocol,
        "RESPONSE_CODE" => Segment::ResponseCode,
        "RESPONSE_FLAGS" => Segment::ResponseFlags,
        "BYTES_RECEIVED" => Segment::BytesReceived,
        "BYTES_SENT" => Segment::BytesSent,
        "DURATION" => Segment::Duration,
        "UPSTREAM_HOST" => Segment::UpstreamHost,
        "UPSTREAM_CLUSTER" => Segment::UpstreamCluster,
        "DOWNSTREAM_REMOTE_ADDRESS" => Segment::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Segment::DownstreamRemoteAddressWithoutPort,
        "ROUTE_NAME" => Segment::RouteName,
        "DOWNSTREAM_PEER_URI_SAN" => Segment::DownstreamPeerUriSan,
        "DOWNSTREAM_PEER_SUBJECT" => Segment::DownstreamPeerSubject,
        "DOWNSTREAM_TLS_VERSION" => Segment::DownstreamTlsVersion,
        "REQUESTED_SERVER_NAME" => Segment::RequestedServerName,
        other => return Err(format!("access log command operator %{other}% is not supported")),
    })
}

/// What is known about one finished request.
#[derive(Debug)]
pub struct LogRecord<'a> {
    pub start: SystemTime,
    pub request_headers: &'a HeaderMap,
    /// `:method`, `:path` and `:authority`, which live outside the header map.
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub protocol: &'a str,
    pub response_headers: Option<&'a HeaderMap>,
    pub status: u16,
    pub flags: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub downstream: SocketAddr,
    pub route_name: &'a str,
    /// The downstream connection's TLS facts (peer certificate, SNI), when it is TLS.
    pub tls: Option<&'a crate::tls::identity::ConnectionTls>,
}

fn dash_if_empty(out: &mut String, value: &str, max_len: Option<usize>) {
    if value.is_empty() {
        out.push('-');
    } else {
        let cut = max_len.map_or(value.len(), |n| value.floor_char_boundary(n.min(value.len())));
        out.push_str(&value[..cut]);
    }
}

impl LogFormat {
    pub fn render(&self, r: &LogRecord<'_>) -> String {
        let mut out = String::with_capacity(256);
        for seg in &self.0 {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::StartTime => out.push_str(&humantime::format_rfc3339_millis(r.start).to_string()),
                Segment::Request { names, max_len } => {
                    let value = names.iter().find_map(|n| match n.as_str() {
                        ":method" => Some(r.method.to_string()),
                        ":path" | "path" => Some(r.path.to_string()),
                        ":authority" | "host" => Some(r.authority.to_string()),
                        _ => r.request_headers.get(n.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string),
                    });
                    dash_if_empty(&mut out, value.as_deref().unwrap_or(""), *max_len);
                }
                Segment::Response { names, max_len } => {
                    let value = r
                        .response_headers
                        .and_then(|h| names.iter().find_map(|n| h.get(n.as_str()).and_then(|v| v.to_str().ok())));
                    dash_if_empty(&mut out, value.unwrap_or(""), *max_len);
                }
                Segment::Protocol => out.push_str(r.protocol),
                Segment::ResponseCode => out.push_str(&r.status.to_string()),
                Segment::ResponseFlags => dash_if_empty(&mut out, r.flags, None),
                Segment::BytesReceived => out.push_str(&r.bytes_received.to_string()),
                Segment::BytesSent => out.push_str(&r.bytes_sent.to_string()),
                Segment::Duration => out.push_str(&r.duration.as_millis().to_string()),
                Segment::UpstreamHost => {
                    dash_if_empty(&mut out, &r.upstream_host.map(|a| a.to_string()).unwrap_or_default(), None)
                }
                Segment::UpstreamCluster => dash_if_empty(&mut out, r.upstream_cluster.unwrap_or(""), None),
                Segment::DownstreamRemoteAddress => out.push_str(&r.downstream.to_string()),
                Segment::DownstreamRemoteAddressWithoutPort => out.push_str(&r.downstream.ip().to_string()),
                Segment::RouteName => dash_if_empty(&mut out, r.route_name, None),
                Segment::DownstreamPeerUriSan => {
                    let uris = r.tls.and_then(|t| t.peer.as_ref()).map(|p| p.sans.uris.join(","));
                    dash_if_empty(&mut out, uris.as_deref().unwrap_or(""), None);
                }
                Segment::DownstreamPeerSubject => {
                    let subject = r.tls.and_then(|t| t.peer.as_ref()).map(|p| p.subject.as_str());
                    dash_if_empty(&mut out, subject.unwrap_or(""), None);
                }
                Segment::DownstreamTlsVersion => {
                    dash_if_empty(&mut out, r.tls.and_then(|t| t.version).unwrap_or(""), None)
                }
                Segment::RequestedServerName => {
                    dash_if_empty(&mut out, r.tls.and_then(|t| t.server_name.as_deref()).unwrap_or(""), None);
                }
            }
        }
        out
    }
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq)]
pub enum LogTarget {
    Stdout,
    Stderr,
    File(std::path::PathBuf),
}

/// One configured access log: a format and a writer thread.
#[derive(Debug)]
pub struct AccessLog {
    pub target: LogTarget,
    pub format: LogFormat,
    tx: mpsc::Sender<String>,
}

impl PartialEq for AccessLog {
    fn eq(&self, other: &Self) -> bool {
        self.target == other.target && self.format == other.format
    }
}

impl AccessLog {
    pub fn open(target: LogTarget, format: LogFormat) -> std::io::Result<Self> {
        let mut writer: Box<dyn Write + Send> = match &target {
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::Stderr => Box::new(std::io::stderr()),
            LogTarget::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            while let Ok(line) = rx.recv() {
                let _ = writer.write_all(line.as_bytes());
                while let Ok(more) = rx.try_recv() {
                    let _ = writer.write_all(more.as_bytes());
                }
                let _ = writer.flush();
            }
        })?;
        Ok(AccessLog { target, format, tx })
    }

    pub fn log(&self, record: &LogRecord<'_>) {
        let _ = self.tx.send(self.format.render(record));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_default_format() {
        let f = LogFormat::parse(DEFAULT_FORMAT).unwrap();
        let mut h = HeaderMap::new();
        h.insert("user-agent", "curl/8".parse().unwrap());
        let r = LogRecord {
            start: SystemTime::UNIX_EPOCH,
            request_headers: &h,
            method: "GET",
            path: "/x",
            authority: "a.com",
            protocol: "HTTP/1.1",
            response_headers: None,
            status: 503,
            flags: "UF",
            bytes_received: 0,
            bytes_sent: 91,
            duration: Duration::from_millis(3),
            upstream_host: Some("127.0.0.1:9".parse().unwrap()),
            upstream_cluster: Some("c"),
            downstream: "127.0.0.1:5000".parse().unwrap(),
            route_name: "",
            tls: None,
        };
        assert_eq!(
            f.render(&r),
            "[1970-01-01T00:00:00.000Z] \"GET /x HTTP/1.1\" 503 UF 0 91 3 - \"-\" \"curl/8\" \"-\" \"a.com\" \"127.0.0.1:9\"\n"
        );
        assert!(LogFormat::parse("%NOPE%").is_err());
        assert_eq!(LogFormat::parse("%%").unwrap().render(&r), "%");
    }
}
