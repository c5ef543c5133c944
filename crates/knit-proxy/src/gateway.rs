//! Gateway mode: a multicluster gateway's inbound (LINKERD-WIRE.md §12.1).
//!
//! A peer proxy in another cluster reaches a Service here through its mirror, whose endpoint is
//! this proxy's inbound port: its transport header names `svc.ns.svc.<cluster domain>:port`
//! instead of a local port. With `KNIT_PROXY_INBOUND_GATEWAY_SUFFIXES` set, such a connection is
//! handed to this proxy's outbound side for that name, as if the application had called it: HTTP
//! by the Service's routes, opaque bytes by its opaque route, both balanced over its endpoints
//! and meshed (mTLS) to them. The target's proxy sees the gateway's identity, not the client's.
//!
//! What a caller can make it do, and what is refused:
//! - only a client that proved a mesh identity, authorized by the policy of the gateway's own
//!   inbound port as a whole (its identities and networks, not its routes): the connection when
//!   it arrives, and then each HTTP request, so a changed policy applies to open connections;
//! - only names within the suffixes, and only Services the control plane knows: never an
//!   address, never a name resolved by DNS (`GatewayDomain`: each HTTP request 404, gRPC
//!   `NotFound`; an opaque connection is closed);
//! - a client whose identity is this gateway's, or a request whose `forwarded` header already
//!   names this gateway (`by=`), is a loop between gateways: 508, gRPC `Aborted`;
//! - the endpoints it reaches are checked as every outbound endpoint is (never its own listeners).

use crate::{
    error::ProxyError,
    http::{headers, Side},
};
use http::{header, HeaderName, HeaderValue, Request, Uri, Version};
use knit_core::destination::Authority;
use std::{net::SocketAddr, sync::Arc};

pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// One connection a peer asked this gateway to forward.
pub struct Hop {
    /// This gateway's identity: a `forwarded: by=` naming it means the request came round again.
    pub own: Arc<str>,
    pub client: SocketAddr,
    pub client_id: String,
    pub target: Authority,
    /// The inbound side and the port the connection arrived on, whose policy authorizes it.
    pub inbound: Arc<Side>,
    pub port: u16,
}

impl Hop {
    /// Whether the client is this gateway itself.
    pub fn from_self(&self) -> bool {
        self.client_id == *self.own
    }

    /// Checks one HTTP request (authorized, no loop), and makes it the request the client's
    /// application sent, addressed to the target.
    pub fn prepare<B>(&self, req: &mut Request<B>) -> Result<(), ProxyError> {
        if self.from_self() {
            return Err(ProxyError::GatewayLoop("the client's identity is this gateway's own"));
        }
        // Each request, not only the connection: a peer's connection lives long (HTTP/2), and a
        // policy changed meanwhile applies to its next request.
        crate::inbound::authorize(&self.inbound, self.client, Some(&self.client_id), true, self.port)?;
        readdress(req, &self.own, &self.client_id, &self.target)
    }
}

/// Refuses a request whose `forwarded` header says it passed gateway `own` already, and
/// rewrites it for the target: HTTP/1 again if the peer upgraded it for the hop
/// (`l5d-orig-proto`), its authority the target's, `forwarded` appended.
fn readdress<B>(req: &mut Request<B>, own: &str, client_id: &str, target: &Authority) -> Result<(), ProxyError> {
    if passed(req.headers(), own) {
        return Err(ProxyError::GatewayLoop("the request's forwarded header says it passed this gateway already"));
    }
    if let Some(v) = req.headers().get(headers::L5D_ORIG_PROTO) {
        let absolute = v.to_str().is_ok_and(|s| s.contains("absolute-form"));
        let version = headers::parse_orig_proto(v).unwrap_or(Version::HTTP_11);
        *req.version_mut() = version;
        if !absolute {
            // Origin-form again: the authority travels in `Host`, set below.
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            if let Ok(uri) = Uri::try_from(pq) {
                *req.uri_mut() = uri;
            }
        }
    }
    address_to(req, target)?;
    // `for=` and `host=` are quoted (RFC 7239: an identity or `host:port` is not a token).
    if let Ok(v) = HeaderValue::from_str(&format!("by={own};for=\"{client_id}\";host=\"{target}\";proto=https")) {
        req.headers_mut().append(FORWARDED, v);
    }
    Ok(())
}

/// Addresses a request to `target` in the form it came in: the URI's authority, when it has
/// one, and `Host` (HTTP/1 always; HTTP/2 only if it carried one). Both sides of a gateway hop do
/// it: the client to the remote Service (Linkerd's `NewOverrideAuthority`), the gateway to the
/// Service it forwards to.
pub fn address_to<B>(req: &mut Request<B>, target: &Authority) -> Result<(), ProxyError> {
    let bad = || ProxyError::BadAuthority(target.to_string());
    let host = HeaderValue::from_str(&target.to_string()).map_err(|_| bad())?;
    if req.uri().authority().is_some() {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let scheme = req.uri().scheme_str().unwrap_or("http");
        *req.uri_mut() = Uri::try_from(format!("{scheme}://{target}{pq}")).map_err(|_| bad())?;
    }
    if req.version() != Version::HTTP_2 || req.headers().contains_key(header::HOST) {
        req.headers_mut().insert(header::HOST, host);
    }
    Ok(())
}

/// The target a peer's transport header names, if this gateway forwards there: a DNS name
/// within one of `suffixes` (a whole label boundary: `svc.cluster.local` takes
/// `books.ns.svc.cluster.local`, not `books.evilsvc.cluster.local`).
pub fn target(name: &str, port: u16, suffixes: &[String]) -> Result<Authority, ProxyError> {
    let raw = format!("{name}:{port}");
    let refuse = |reason| ProxyError::GatewayDomain { target: raw.clone(), reason };
    let a = Authority::parse(&raw, None).map_err(|_| refuse("it is not a name:port"))?;
    if a.host.parse::<std::net::IpAddr>().is_ok() || a.host.contains(':') {
        return Err(refuse("it is an address, not a Service name"));
    }
    let within = |s: &String| a.host.strip_suffix(s.as_str()).is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'));
    if !suffixes.iter().any(within) {
        return Err(refuse("the name is outside the gateway's suffixes (KNIT_PROXY_INBOUND_GATEWAY_SUFFIXES)"));
    }
    Ok(a)
}

/// Whether a `forwarded` header (RFC 7239, any number of them, comma-separated elements) has a
/// `by=` naming `own`.
fn passed(headers: &http::HeaderMap, own: &str) -> bool {
    headers
        .get_all(FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|pair| pair.split_once('=').is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("by") && v.trim().trim_matches('"') == own))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str = "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.east.local";

    fn suffixes() -> Vec<String> {
        vec!["svc.cluster.local".into()]
    }

    #[test]
    fn only_service_names_within_the_suffixes_are_targets() {
        assert_eq!(target("books.shop.svc.cluster.local", 8080, &suffixes()).unwrap().to_string(), "books.shop.svc.cluster.local:8080");
        assert_eq!(target("Books.Shop.svc.cluster.local.", 8080, &suffixes()).unwrap().host, "books.shop.svc.cluster.local", "one spelling");
        for (name, port) in [
            ("books.shop.evilsvc.cluster.local", 80),
            ("svc.cluster.local", 80),
            (".svc.cluster.local", 80),
            ("books.shop.svc.cluster.local.example.com", 80),
            ("10.0.0.7", 80),
            ("books.shop.svc.cluster.local", 0),
            ("books shop.svc.cluster.local", 80),
        ] {
            let e = target(name, port, &suffixes()).unwrap_err();
            assert!(matches!(e, ProxyError::GatewayDomain { .. }), "{name}:{port}: {e}");
            assert_eq!(e.http_status(), http::StatusCode::NOT_FOUND);
        }
        assert!(target("books.shop.svc.cluster.local", 80, &[]).is_err(), "no suffixes: nothing");
    }

    fn books() -> Authority {
        target("books.shop.svc.cluster.local", 8080, &suffixes()).unwrap()
    }

    #[test]
    fn a_request_is_readdressed_downgraded_and_marked() {
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://books-east.shop.svc.cluster.local:8080/list?x=1")
            .header(headers::L5D_ORIG_PROTO, "HTTP/1.1")
            .header(header::HOST, "books-east.shop.svc.cluster.local:8080")
            .body(())
            .unwrap();
        readdress(&mut req, GW, "web.shop.serviceaccount.identity.linkerd.west.local", &books()).unwrap();
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri().to_string(), "/list?x=1", "origin-form, as the client sent it");
        assert_eq!(req.headers()[header::HOST], "books.shop.svc.cluster.local:8080");
        assert_eq!(
            req.headers()[FORWARDED],
            format!("by={GW};for=\"web.shop.serviceaccount.identity.linkerd.west.local\";host=\"books.shop.svc.cluster.local:8080\";proto=https")
        );

        let mut h2 = Request::builder().version(Version::HTTP_2).uri("http://books-east.shop:8080/books.Books/List").body(()).unwrap();
        readdress(&mut h2, GW, "web", &books()).unwrap();
        assert_eq!(h2.uri().to_string(), "http://books.shop.svc.cluster.local:8080/books.Books/List");
        assert!(!h2.headers().contains_key(header::HOST), "HTTP/2 carries the authority in :authority only");
    }

    #[test]
    fn loops_are_refused() {
        for forwarded in [format!("by={GW};for=x"), format!("for=a;by=other, host=h;By=\"{GW}\"")] {
            let mut req = Request::builder().uri("/").header(FORWARDED, "by=someone-else").header(FORWARDED, forwarded.as_str()).body(()).unwrap();
            let e = readdress(&mut req, GW, "web", &books()).unwrap_err();
            assert!(matches!(e, ProxyError::GatewayLoop(_)) && e.http_status() == http::StatusCode::LOOP_DETECTED, "{forwarded}: {e}");
        }
        let mut other = Request::builder().uri("/").header(FORWARDED, "by=another-gateway;for=x").body(()).unwrap();
        readdress(&mut other, GW, "web", &books()).unwrap();
        assert_eq!(other.headers().get_all(FORWARDED).iter().count(), 2, "appended to the earlier hop's");
    }
}
