//! A route's `hash_policy`: the request hash that RING_HASH and MAGLEV clusters pick by. Each policy
//! that finds its value mixes it in (Envoy's rotate-and-xor); a terminal one that found its value
//! ends the list. A cookie policy with a `ttl` makes up the cookie when the request has none, and the
//! response sets it, so the client sticks from then on.

use crate::upstream::hashing::xxhash;
use http::HeaderValue;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie { name: String, ttl: Option<Duration>, path: String },
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HashPolicy {
    pub key: HashKey,
    pub terminal: bool,
}

/// The request's hash, and a `set-cookie` value when a cookie had to be made up.
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &http::HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> (Option<u64>, Option<HeaderValue>) {
    let mut hash: Option<u64> = None;
    let mut set_cookie = None;
    for policy in policies {
        let found = match &policy.key {
            HashKey::Header(name) => {
                let values: Vec<&[u8]> = headers.get_all(name).iter().map(HeaderValue::as_bytes).collect();
                (!values.is_empty()).then(|| xxhash(&values.join(&b","[..])))
            }
            HashKey::SourceIp => Some(xxhash(peer.ip().to_string().as_bytes())),
            HashKey::QueryParameter(name) => query_value(query, name).map(|v| xxhash(v.as_bytes())),
            HashKey::Cookie { name, ttl, path } => match cookie_value(headers, name) {
                Some(value) => Some(xxhash(value.as_bytes())),
                None => ttl.map(|ttl| {
                    let value =
                        format!("{:016x}", xxhash(format!("{peer}-{:?}", std::time::SystemTime::now()).as_bytes()));
                    let mut cookie = format!("{name}=\"{value}\"");
                    if !ttl.is_zero() {
                        cookie += &format!("; Max-Age={}", ttl.as_secs());
                    }
                    if !path.is_empty() {
                        cookie += &format!("; Path={path}");
                    }
                    cookie += "; HttpOnly";
                    set_cookie = HeaderValue::from_str(&cookie).ok();
                    xxhash(value.as_bytes())
                }),
            },
        };
        if let Some(found) = found {
            hash = Some(match hash {
                Some(h) => h.rotate_left(1) ^ found,
                None => found,
            });
            if policy.terminal {
                break;
            }
        }
    }
    (hash, set_cookie)
}

fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn cookie_value(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(key: HashKey, terminal: bool) -> HashPolicy {
        HashPolicy { key, terminal }
    }

    #[test]
    fn the_same_request_hashes_the_same_and_terminal_policies_stop() {
        let peer: SocketAddr = ([10, 0, 0, 7], 5000).into();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", "ann".parse().unwrap());
        headers.insert(http::header::COOKIE, "a=1; session=\"abc\"".parse().unwrap());
        let user = policy(HashKey::Header("x-user".parse().unwrap()), true);
        let ip = policy(HashKey::SourceIp, false);
        let (h1, _) = request_hash(&[user.clone(), ip.clone()], &headers, None, peer);
        let (h2, _) = request_hash(std::slice::from_ref(&user), &headers, None, ([10, 0, 0, 8], 1).into());
        assert_eq!(h1, h2, "terminal: the source address never counted");
        assert_eq!(h1, Some(xxhash(b"ann")));
        let (mixed, _) = request_hash(&[ip.clone(), user], &headers, None, peer);
        assert_eq!(mixed, Some(xxhash(b"10.0.0.7").rotate_left(1) ^ xxhash(b"ann")));
        let session = HashKey::Cookie { name: "session".into(), ttl: None, path: String::new() };
        assert_eq!(request_hash(&[policy(session, false)], &headers, None, peer).0, Some(xxhash(b"abc")));
        let query = policy(HashKey::QueryParameter("id".into()), false);
        assert_eq!(
            request_hash(std::slice::from_ref(&query), &headers, Some("x=1&id=42"), peer).0,
            Some(xxhash(b"42"))
        );
        assert_eq!(request_hash(&[query], &headers, Some("x=1"), peer).0, None);
    }

    #[test]
    fn a_missing_cookie_with_a_ttl_is_made_up_and_set() {
        let peer: SocketAddr = ([10, 0, 0, 7], 5000).into();
        let sticky = HashKey::Cookie { name: "route".into(), ttl: Some(Duration::from_secs(60)), path: "/".into() };
        let (hash, set) = request_hash(&[policy(sticky.clone(), false)], &http::HeaderMap::new(), None, peer);
        let set = set.expect("a cookie to set").to_str().unwrap().to_string();
        assert!(set.starts_with("route=\"") && set.ends_with("\"; Max-Age=60; Path=/; HttpOnly"), "{set}");
        // The client sends it back: the same hash.
        let value = set.split('"').nth(1).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::COOKIE, format!("route={value}").parse().unwrap());
        let (again, none) = request_hash(&[policy(sticky, false)], &headers, None, peer);
        assert_eq!((again, none), (hash, None));
    }
}
