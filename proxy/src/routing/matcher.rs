//! Value matchers used by routes: string matchers, header matchers, query-parameter matchers and path
//! matchers, with Envoy's semantics (full-match regexes, joined multi-value headers, invert, presence).

use http::HeaderMap;
use regex::Regex;

/// Envoy's `type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Compiled as a full match (`^(?:...)$`), as RE2 in Envoy matches the whole value.
    Regex(Regex),
}

/// A string matcher with Envoy's `ignore_case` (which does not apply to regexes).
#[derive(Debug, Clone)]
pub struct StringMatcher {
    pub kind: StringMatch,
    pub ignore_case: bool,
}

impl StringMatcher {
    pub fn matches(&self, value: &str) -> bool {
        match &self.kind {
            StringMatch::Regex(re) => re.is_match(value),
            StringMatch::Exact(s) if self.ignore_case => value.eq_ignore_ascii_case(s),
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => starts_with(value, s, !self.ignore_case),
            StringMatch::Suffix(s) => {
                value.len() >= s.len() && {
                    let tail = &value.as_bytes()[value.len() - s.len()..];
                    if self.ignore_case { tail.eq_ignore_ascii_case(s.as_bytes()) } else { tail == s.as_bytes() }
                }
            }
            StringMatch::Contains(s) if self.ignore_case => {
                value.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
            }
            StringMatch::Contains(s) => value.contains(s.as_str()),
        }
    }
}

/// Compiles a regex as Envoy's RE2 matcher is used: the whole input must match.
pub fn full_match_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

pub fn starts_with(value: &str, prefix: &str, case_sensitive: bool) -> bool {
    value.len() >= prefix.len() && {
        let head = &value.as_bytes()[..prefix.len()];
        if case_sensitive { head == prefix.as_bytes() } else { head.eq_ignore_ascii_case(prefix.as_bytes()) }
    }
}

/// How a route matches the request path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The `:path` (query included, as Envoy does) starts with this.
    Prefix(String),
    /// The path without its query string equals this.
    Exact(String),
    /// The path without its query string, whole, matches this regex.
    Regex(Regex),
    /// The path without query equals this or continues with `/`.
    SeparatedPrefix(String),
}

impl PathMatch {
    /// `path` is `path_and_query` without its query string (split once per request by the caller).
    pub fn matches_split(&self, path_and_query: &str, path: &str, case_sensitive: bool) -> bool {
        match self {
            PathMatch::Prefix(p) => starts_with(path_and_query, p, case_sensitive),
            PathMatch::Exact(p) if case_sensitive => path == p,
            PathMatch::Exact(p) => path.eq_ignore_ascii_case(p),
            PathMatch::Regex(re) => re.is_match(path),
            PathMatch::SeparatedPrefix(p) => {
                starts_with(path, p, case_sensitive) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        }
    }

    pub fn matches(&self, path_and_query: &str, case_sensitive: bool) -> bool {
        self.matches_split(path_and_query, without_query(path_and_query), case_sensitive)
    }

    /// The part of the path a `prefix_rewrite` replaces: the matched prefix, or the whole path.
    pub fn rewrite_len(&self, path_and_query: &str) -> usize {
        match self {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => p.len(),
            PathMatch::Exact(_) | PathMatch::Regex(_) => {
                path_and_query.split_once('?').map_or(path_and_query.len(), |(p, _)| p.len())
            }
        }
    }
}

/// The path without its query string.
pub fn without_query(path_and_query: &str) -> &str {
    path_and_query.split_once('?').map_or(path_and_query, |(p, _)| p)
}

/// What a header matcher checks of the (joined) header value.
#[derive(Debug, Clone)]
pub enum HeaderCheck {
    Present(bool),
    Value(StringMatcher),
    /// `[start, end)` on a base-10 integer value.
    Range {
        start: i64,
        end: i64,
    },
}

/// Envoy's `config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: http::HeaderName,
    pub check: HeaderCheck,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        if let HeaderCheck::Present(want) = self.check {
            let present = headers.contains_key(&self.name);
            return (present == want) != self.invert;
        }
        let mut values = headers.get_all(&self.name).iter();
        let joined: std::borrow::Cow<'_, str> = match values.next() {
            None if self.treat_missing_as_empty => "".into(),
            None => return self.invert,
            Some(first) => {
                let first = String::from_utf8_lossy(first.as_bytes());
                match values.next() {
                    None => first,
                    Some(second) => {
                        let mut all = first.into_owned();
                        for v in std::iter::once(second).chain(values) {
                            all.push(',');
                            all.push_str(&String::from_utf8_lossy(v.as_bytes()));
                        }
                        all.into()
                    }
                }
            }
        };
        self.check.check(Some(&joined)) != self.invert
    }
}

impl HeaderCheck {
    /// Whether a (joined) header value passes; `None`: the header is absent.
    pub fn check(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (HeaderCheck::Present(want), value) => value.is_some() == *want,
            (_, None) => false,
            (HeaderCheck::Value(m), Some(v)) => m.matches(v),
            (HeaderCheck::Range { start, end }, Some(v)) => v.parse::<i64>().is_ok_and(|v| v >= *start && v < *end),
        }
    }
}

/// Envoy's `config.route.v3.QueryParameterMatcher`: the first value of the named parameter, decoded.
#[derive(Debug, Clone)]
pub struct QueryMatcher {
    pub name: String,
    /// `None`: the parameter must be present.
    pub value: Option<StringMatcher>,
    /// `Some(false)` from `present_match: false`: the parameter must be absent.
    pub present: Option<bool>,
}

impl QueryMatcher {
    pub fn matches(&self, query: Option<&str>) -> bool {
        let found = query.and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(k) == self.name).then(|| decode(v).into_owned())
            })
        });
        match (&self.value, self.present, found) {
            (Some(m), _, Some(v)) => m.matches(&v),
            (Some(_), _, None) => false,
            (None, Some(false), found) => found.is_none(),
            (None, _, found) => found.is_some(),
        }
    }
}

fn decode(s: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(kind: StringMatch, ignore_case: bool) -> StringMatcher {
        StringMatcher { kind, ignore_case }
    }

    #[test]
    fn string_matchers() {
        assert!(sm(StringMatch::Exact("Abc".into()), true).matches("aBC"));
        assert!(!sm(StringMatch::Exact("Abc".into()), false).matches("aBC"));
        assert!(sm(StringMatch::Suffix(".com".into()), false).matches("x.com"));
        assert!(!sm(StringMatch::Suffix(".com".into()), false).matches("com"));
        assert!(sm(StringMatch::Regex(full_match_regex(r"\d{3}").unwrap()), false).matches("123"));
        assert!(!sm(StringMatch::Regex(full_match_regex(r"\d{3}").unwrap()), false).matches("1234"));
        assert!(sm(StringMatch::Contains("MID".into()), true).matches("a-mid-b"));
    }

    #[test]
    fn path_matchers_follow_envoy() {
        assert!(PathMatch::Prefix("/api".into()).matches("/api/v1?x=1", true));
        assert!(PathMatch::Prefix("/API".into()).matches("/api/v1", false));
        assert!(!PathMatch::Prefix("/API".into()).matches("/api/v1", true));
        assert!(PathMatch::Exact("/a".into()).matches("/a?q=1", true));
        assert!(!PathMatch::Exact("/a".into()).matches("/a/", true));
        assert!(PathMatch::Regex(full_match_regex("/v[0-9]+/.*").unwrap()).matches("/v2/x?y", true));
        assert!(!PathMatch::Regex(full_match_regex("/v[0-9]+").unwrap()).matches("/v2/x", true));
        let sep = PathMatch::SeparatedPrefix("/api/dev".into());
        assert!(sep.matches("/api/dev", true) && sep.matches("/api/dev/v1", true));
        assert!(!sep.matches("/api/developer", true));
    }

    #[test]
    fn header_matchers_join_values_and_invert() {
        let mut h = HeaderMap::new();
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        let m = |check, invert, treat| HeaderMatcher {
            name: http::HeaderName::from_static("x-a"),
            check,
            invert,
            treat_missing_as_empty: treat,
        };
        assert!(m(HeaderCheck::Value(sm(StringMatch::Exact("1,2".into()), false)), false, false).matches(&h));
        assert!(m(HeaderCheck::Present(true), false, false).matches(&h));
        assert!(!m(HeaderCheck::Present(true), true, false).matches(&h));
        let empty = HeaderMap::new();
        assert!(!m(HeaderCheck::Value(sm(StringMatch::Exact("".into()), false)), false, false).matches(&empty));
        assert!(m(HeaderCheck::Value(sm(StringMatch::Exact("".into()), false)), false, true).matches(&empty));
        assert!(m(HeaderCheck::Value(sm(StringMatch::Exact("x".into()), false)), true, false).matches(&empty));
        let mut n = HeaderMap::new();
        n.insert("x-a", "5".parse().unwrap());
        assert!(m(HeaderCheck::Range { start: 0, end: 10 }, false, false).matches(&n));
        assert!(!m(HeaderCheck::Range { start: 0, end: 5 }, false, false).matches(&n));
    }

    #[test]
    fn query_matchers_use_first_decoded_value() {
        let q = QueryMatcher {
            name: "a b".into(),
            value: Some(sm(StringMatch::Exact("x y".into()), false)),
            present: None,
        };
        assert!(q.matches(Some("a%20b=x%20y&a%20b=z")));
        assert!(!q.matches(Some("a%20b=z&a%20b=x%20y")));
        let present = QueryMatcher { name: "debug".into(), value: None, present: None };
        assert!(present.matches(Some("debug")));
        assert!(!present.matches(None));
    }
}
