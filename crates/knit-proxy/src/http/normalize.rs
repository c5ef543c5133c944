//! Routing and authorization see the request the application will see (docs/security.md):
//! - an absolute-form URI (or HTTP/2 `:authority`) whose host disagrees with `Host` is refused
//!   with 400: which of the two a route matched and which one the application reads would
//!   otherwise be a matter of luck;
//! - the path is normalized before anything matches it, and forwarded normalized, as Envoy's
//!   `normalize_path` and `merge_slashes` do: percent-encoded unreserved characters are decoded
//!   (`/%61dmin` is `/admin`), other escapes get upper-case hex, repeated slashes are merged
//!   (`//admin`), and dot segments are removed (`/public/../admin`), so no spelling of `/admin`
//!   walks around a rule for `/admin`.

use crate::error::ProxyError;
use http::{header, uri::PathAndQuery, Method, Request, Uri};
use std::borrow::Cow;

/// Refuses a request with more than one `Host` header (RFC 9112 §3.2: routing would read the
/// first, an application may read the last), or whose URI authority and `Host` name different
/// hosts or ports.
pub fn check_authority<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    if req.method() == Method::CONNECT {
        return Ok(());
    }
    let (Some(uri), Some(host)) = (req.uri().authority(), req.headers().get(header::HOST)) else { return Ok(()) };
    let host = host.to_str().map_err(|_| ProxyError::BadAuthority(String::from_utf8_lossy(host.as_bytes()).into_owned()))?;
    let default = if req.uri().scheme_str() == Some("https") { 443 } else { 80 };
    let key = |a: &str| -> (String, u16) {
        let a = a.to_ascii_lowercase();
        match a.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h.trim_end_matches('.').to_string(), p.parse().unwrap_or(0)),
            _ => (a.trim_end_matches('.').to_string(), default),
        }
    };
    if key(uri.as_str()) != key(host) {
        return Err(ProxyError::MismatchedAuthority { uri: uri.to_string(), host: host.to_string() });
    }
    Ok(())
}

/// Rewrites the request's path in its normalized form (the query is kept as it is).
pub fn normalize<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    let Some(pq) = req.uri().path_and_query() else { return Ok(()) };
    let Cow::Owned(path) = normalize_path(pq.path()) else { return Ok(()) };
    let pq = match pq.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq.as_str()).map_err(|_| ProxyError::BadPath(pq.clone()))?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadPath(pq))?;
    Ok(())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// The normalized form of `path`; borrowed when it already is normalized (the common case costs
/// one scan and no allocation). `*` (`OPTIONS *`) is left alone.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if path == "*" {
        return Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let clean = b.first() == Some(&b'/') && !b.windows(2).any(|w| w == b"//") && !b.contains(&b'%') && !path.split('/').any(|s| s == "." || s == "..");
    if clean {
        return Cow::Borrowed(path);
    }
    // 1. Percent-decoding of unreserved characters; other escapes upper-cased; a `%` that
    //    starts no escape is itself escaped (`%25`), so decoding cannot make a new escape out
    //    of it (`%e%32` is `%25e2`, not `%e2`) and normalizing twice changes nothing.
    let mut decoded = String::with_capacity(path.len() + 1);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                let c = h << 4 | l;
                if is_unreserved(c) {
                    decoded.push(char::from(c));
                } else {
                    decoded.push('%');
                    decoded.push(char::from(b[i + 1].to_ascii_uppercase()));
                    decoded.push(char::from(b[i + 2].to_ascii_uppercase()));
                }
                i += 3;
                continue;
            }
            decoded.push_str("%25");
            i += 1;
            continue;
        }
        decoded.push(char::from(b[i]));
        i += 1;
    }
    // 2. Merged slashes and removed dot segments (RFC 3986 §5.2.4), over whole segments.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..") || decoded == "." || decoded == "..";
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len() + 1);
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || (trailing && !path.ends_with('/')) {
        path.push('/');
    }
    Cow::Owned(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_path_is_one_path() {
        for (raw, want) in [
            ("/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%61%64%6D%69%6e", "/admin"),
            ("//admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/public/./../admin/", "/admin/"),
            ("/a/b/../../../admin", "/admin"),
            ("/admin/.", "/admin/"),
            ("/admin/..", "/"),
            ("admin", "/admin"),
            ("/a%2fb", "/a%2Fb"),
            ("/%2e%2e/admin", "/admin"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/100%", "/100%25"),
            // Found by the path fuzz target: decoding `%32` used to turn `%e%32b` into `%e2b`,
            // a new escape the next decoder reads as a byte the rules never saw.
            ("/%e%32b/%2%66", "/%25e2b/%252f"),
            ("*", "*"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
            assert_eq!(normalize_path(want), want, "normalizing {want} again changes nothing");
        }
        assert!(matches!(normalize_path("/books/1"), Cow::Borrowed(_)), "a clean path is not copied");
    }

    #[test]
    fn the_request_is_rewritten_and_keeps_its_query() {
        let mut req = Request::get("http://books:8080//x/../admin?a=%2e&b").body(()).unwrap();
        normalize(&mut req).unwrap();
        assert_eq!(req.uri().to_string(), "http://books:8080/admin?a=%2e&b");
    }

    #[test]
    fn an_absolute_uri_must_agree_with_host() {
        let req = |uri: &str, host: &str| Request::get(uri).header("host", host).body(()).unwrap();
        assert!(check_authority(&req("http://books:8080/", "books:8080")).is_ok());
        assert!(check_authority(&req("http://Books/", "books:80")).is_ok(), "the default port and case do not matter");
        assert!(check_authority(&req("/admin", "anything")).is_ok(), "origin form has only Host");
        let e = check_authority(&req("http://admin.internal/", "books:8080")).unwrap_err();
        assert!(matches!(e, ProxyError::MismatchedAuthority { .. }) && e.http_status() == 400, "{e}");
        assert!(check_authority(&req("http://books:8081/", "books:8080")).is_err());
    }
}
