//! Who may do what: reads are open on a loopback address, and need the token elsewhere;
//! writes always need it. The token is `http.token_file`'s content, read at each request
//! that needs it (so it can be changed without a restart), and compared in constant time.
//!
//! A request that a proxy forwarded (`Forwarded`, `X-Forwarded-For`) needs the token to
//! read too: behind a reverse proxy, loopback is no longer this host's users only.
//!
//! A browser on this host may be led by a page of another site to this server's
//! address (DNS rebinding): requests are answered only when their `Host` is an address
//! or `localhost`, never another name.

use axum::http::{header, HeaderMap, StatusCode};
use supervisor_config::HttpConfig;

use super::api::ApiError;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Whether a request with `headers` (and `query_token`, the `token` of its query: an
/// `EventSource` cannot send headers) may do `access`.
pub fn check(
    http: &HttpConfig,
    headers: &HeaderMap,
    query_token: Option<&str>,
    access: Access,
) -> Result<(), ApiError> {
    // A request that came through a proxy may come from anywhere the proxy serves.
    let proxied =
        headers.contains_key(header::FORWARDED) || headers.contains_key("x-forwarded-for");
    if access == Access::Read && super::reads_are_open(http) && !proxied {
        return Ok(());
    }
    let token = match http.read_token() {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(unauthorized(
                "nothing can be changed over HTTP: the config sets no http.token_file",
            ))
        }
        Err(e) => {
            log::error!("http: {e}");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the token file cannot be read; see the supervisor's log",
            ));
        }
    };
    let given = bearer(headers).or(match access {
        Access::Read => query_token,
        Access::Write => None,
    });
    match given {
        None => Err(unauthorized(
            "this needs the token: send `Authorization: Bearer <token>`",
        )),
        Some(g) if same(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(unauthorized("wrong token")),
    }
}

fn unauthorized(why: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, why)
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// `a == b`, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Whether a request's `Host` header names this server by address or as `localhost`
/// (or is absent: HTTP/1.0).
pub fn host_is_allowed(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [::1]:7070
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"ab", b"abc"));
        assert!(!same(b"", b"a"));
        assert!(same(b"", b""));
    }

    #[test]
    fn only_addresses_and_localhost_are_hosts() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            host_is_allowed(&m)
        };
        assert!(host("127.0.0.1:7070"));
        assert!(host("localhost:7070"));
        assert!(host("LOCALHOST"));
        assert!(host("[::1]:7070"));
        assert!(host("10.1.2.3"));
        assert!(!host("evil.example:7070"));
        assert!(!host("localhost.evil.example"));
        assert!(!host("[evil]:80"));
        assert!(host_is_allowed(&HeaderMap::new()));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut m = HeaderMap::new();
        m.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(bearer(&m), Some("s3cret"));
        m.insert(header::AUTHORIZATION, "bearer  s3cret ".parse().unwrap());
        assert_eq!(bearer(&m), Some("s3cret"));
        m.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&m), None);
    }
}
