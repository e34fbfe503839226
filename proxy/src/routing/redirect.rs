//! Redirect responses: builds the `location` for a route's `redirect` action as Envoy does.

use super::PathMatch;
use http::StatusCode;

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<RedirectPath>,
    pub strip_query: bool,
    pub status: StatusCode,
}

#[derive(Debug)]
pub enum RedirectPath {
    /// Replaces the whole path (a query in it replaces the request's query).
    Path(String),
    /// Replaces the part of the path the route matched.
    PrefixRewrite(String),
}

impl Redirect {
    /// The `location` for a request with this scheme (`x-forwarded-proto`), authority and path.
    pub fn location(&self, request_scheme: &str, authority: &str, path_and_query: &str, matched: &PathMatch) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(request_scheme);
        let host = match &self.host {
            Some(h) => h.clone(),
            None => request_host(authority, scheme, request_scheme, self.port.is_some()).to_string(),
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let (orig_path, orig_query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let (path, query) = match &self.path {
            Some(RedirectPath::Path(p)) => match p.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (p.clone(), orig_query.map(str::to_string)),
            },
            Some(RedirectPath::PrefixRewrite(prefix)) => {
                let cut = matched.rewrite_len(path_and_query).min(orig_path.len());
                (format!("{prefix}{}", &orig_path[cut..]), orig_query.map(str::to_string))
            }
            None => (orig_path.to_string(), orig_query.map(str::to_string)),
        };
        let query = if self.strip_query { None } else { query };
        match query {
            Some(q) if !q.is_empty() => format!("{scheme}://{host}{port}{path}?{q}"),
            _ => format!("{scheme}://{host}{port}{path}"),
        }
    }
}

/// The request's authority for a redirect: its port is dropped when a new port is set, or when the
/// scheme changes and the port was the old scheme's default.
fn request_host<'a>(authority: &'a str, new_scheme: &str, request_scheme: &str, new_port: bool) -> &'a str {
    let stripped = super::strip_port(authority);
    if stripped.len() == authority.len() {
        return authority;
    }
    let port = &authority[stripped.len()..];
    let mut remove = new_port;
    if new_scheme != request_scheme {
        remove |= request_scheme == "https" && port == ":443";
        remove |= request_scheme == "http" && port == ":80";
    }
    if remove { stripped } else { authority }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(scheme: Option<&str>, host: Option<&str>, port: Option<u16>, path: Option<RedirectPath>) -> Redirect {
        Redirect {
            scheme: scheme.map(str::to_string),
            host: host.map(str::to_string),
            port,
            path,
            strip_query: false,
            status: StatusCode::MOVED_PERMANENTLY,
        }
    }

    #[test]
    fn https_redirect_drops_default_port() {
        let prefix = PathMatch::Prefix("/".into());
        let r = redirect(Some("https"), None, None, None);
        assert_eq!(r.location("http", "a.com:80", "/x?y=1", &prefix), "https://a.com/x?y=1");
        assert_eq!(r.location("http", "a.com:8080", "/x", &prefix), "https://a.com:8080/x");
    }

    #[test]
    fn host_port_and_path_rewrites() {
        let prefix = PathMatch::Prefix("/old".into());
        let r = redirect(None, Some("b.com"), Some(8443), Some(RedirectPath::PrefixRewrite("/new".into())));
        assert_eq!(r.location("http", "a.com", "/old/x?q", &prefix), "http://b.com:8443/new/x?q");
        let r = redirect(None, None, None, Some(RedirectPath::Path("/p?z=1".into())));
        assert_eq!(r.location("http", "a.com:81", "/old?q", &prefix), "http://a.com:81/p?z=1");
        let mut r = redirect(None, None, None, None);
        r.strip_query = true;
        assert_eq!(r.location("http", "a.com", "/old?q", &prefix), "http://a.com/old");
    }
}
