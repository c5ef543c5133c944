//! Header rules for a proxy hop: hop-by-hop headers (RFC 9110 §7.6.1) and Linkerd's
//! `l5d-orig-proto` HTTP/1 → HTTP/2 upgrade between proxies (LINKERD-WIRE.md §6.3).

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Version};

pub const L5D_ORIG_PROTO: HeaderName = HeaderName::from_static("l5d-orig-proto");
pub const L5D_PROXY_ERROR: HeaderName = HeaderName::from_static("l5d-proxy-error");
pub const L5D_CLIENT_ID: HeaderName = HeaderName::from_static("l5d-client-id");

/// `Trailer` is deliberately absent: it is end-to-end since RFC 7230, and an HTTP/1 server (hyper
/// included) sends only the trailer fields it declares.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
];

/// Whether the request asks to leave HTTP: an `Upgrade` (WebSocket) or a `CONNECT` tunnel.
pub fn is_tunnel<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT || (req.version() <= Version::HTTP_11 && req.headers().contains_key(header::UPGRADE))
}

/// Removes hop-by-hop headers and those the `Connection` header names. `Upgrade` and `Connection:
/// upgrade` survive on tunnel requests and switching responses, whose next hop must see them. `TE`
/// survives only as `trailers`, which gRPC needs end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names instead of a lookup for each.
    let hop = |n: &HeaderName| HOP_BY_HOP.contains(n) || n == header::UPGRADE || n == header::TE;
    if !keep_upgrade && !headers.keys().any(hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        // A client's `Connection` may not remove what routing, authorization and framing read
        // (the request's authority, its length): the next hop must see the same request.
        .filter(|n| ![header::HOST, header::CONTENT_LENGTH, header::TRANSFER_ENCODING].contains(n))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        if keep_upgrade && n == header::CONNECTION {
            continue;
        }
        headers.remove(n);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    let te_trailers = headers.get_all(header::TE).iter().any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The `l5d-orig-proto` value for an HTTP/1 request being carried over HTTP/2; `absolute`: the
/// client sent an absolute-form URI.
pub fn orig_proto_value(version: Version, absolute: bool) -> HeaderValue {
    HeaderValue::from_static(match (version == Version::HTTP_10, absolute) {
        (true, false) => "HTTP/1.0",
        (true, true) => "HTTP/1.0; absolute-form",
        (false, false) => "HTTP/1.1",
        (false, true) => "HTTP/1.1; absolute-form",
    })
}

/// The HTTP/1 version an `l5d-orig-proto` value restores, if it is one.
pub fn parse_orig_proto(v: &HeaderValue) -> Option<Version> {
    let v = v.to_str().ok()?;
    let proto = v.split(';').next()?.trim();
    match proto {
        "HTTP/1.1" => Some(Version::HTTP_11),
        "HTTP/1.0" => Some(Version::HTTP_10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-app"]);
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn keeps_upgrade_for_tunnels() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn orig_proto_values() {
        assert_eq!(parse_orig_proto(&orig_proto_value(Version::HTTP_10, false)), Some(Version::HTTP_10));
        assert_eq!(parse_orig_proto(&orig_proto_value(Version::HTTP_11, true)), Some(Version::HTTP_11));
        assert_eq!(parse_orig_proto(&HeaderValue::from_static("HTTP/1.1; absolute-form")), Some(Version::HTTP_11));
        assert_eq!(parse_orig_proto(&HeaderValue::from_static("HTTP/2")), None);
        let req = Request::builder().method("GET").header("upgrade", "websocket").body(()).unwrap();
        assert!(is_tunnel(&req));
        let req = Request::builder().method("CONNECT").uri("a:443").body(()).unwrap();
        assert!(is_tunnel(&req));
    }
}
