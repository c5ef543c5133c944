//! The inbound side: connections from outside the workload to its application.
//!
//! 1. `accept`: the target is the original destination (iptables), else the local-mode target;
//!    a connection straight to the inbound port (a peer proxy's) has none until its transport
//!    header names one. A target that is one of this proxy's own listeners is refused (a loop).
//! 2. The target port's server policy (`InboundServerPolicies.WatchPort`; until the control plane
//!    answers, the default policy, opaque on the configured opaque ports) names the protocol.
//! 3. `Opaque`: forwarded without detection once the connection is authorized. Otherwise the
//!    first bytes are read: mesh TLS for this proxy's name (or another mesh identity) is
//!    terminated, the client's identity taken from its certificate, and the inner stream handled
//!    again (a transport header when ALPN says so); a plaintext transport header is honoured only
//!    by a proxy without identity. Then, by the policy's protocol: `Http1`, `Http2`, `Grpc`:
//!    HTTP, never detected (only the version is read), so a slow client cannot turn the port
//!    into raw TCP; `Tls`: forwarded; `Detect`: HTTP when it is HTTP, else opaque, and a silent
//!    client lets the first speaker decide (see `detect`).
//! 4. HTTP is authorized per request (`http/authorize.rs`: route, authorization, rate limit,
//!    filters); opaque bytes once per connection (a refused connection is closed).

use crate::{
    detect::{self, Outcome, Speaker, Timeouts},
    drain,
    error::ProxyError,
    http::{self, Ctx, Dest, HttpVersion, Side},
    io::{CountingIo, PrefixedIo},
    metrics::{HttpLabels, NoTlsReason, Peer, TcpLabels, Tls},
    orig_dst,
    policy::inbound::Protocol,
    record::{serving, Setup},
    tcp::ClientIo,
};
use bytes::{Bytes, BytesMut};
use knit_core::{
    destination::Endpoint,
    detect::Protocol as Detected,
    transport_header::{self, Decoded, HeaderError, SessionProtocol, TransportHeader},
};
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tracing::Instrument;

/// How long a peer has to send its whole transport header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One span per connection.
pub async fn serve_connection(tcp: TcpStream, client: SocketAddr, side: Arc<Side>, drain: drain::Watch) {
    let span = tracing::info_span!("inbound", %client);
    async move {
        if let Err(e) = crate::record::recorded(&side, client, Box::pin(accept(tcp, client, &side, drain))).await {
            side.metrics.http.errors.get_or_create(&crate::metrics::labels_error(side.direction, &e)).inc();
            tracing::info!(error = %e, "connection failed");
        }
    }
    .instrument(span)
    .await
}

/// What the connection carries once TLS (if any) is off: where it goes and who sent it.
struct Conn {
    client: SocketAddr,
    /// This connection's local address: transport headers name ports on it.
    local: SocketAddr,
    target: Option<SocketAddr>,
    tls: Tls,
    client_id: Option<String>,
    /// Mesh TLS with a client identity, or a transport header: a peer proxy sent it.
    from_peer: bool,
    side: Arc<Side>,
    drain: drain::Watch,
}

async fn accept(tcp: TcpStream, client: SocketAddr, side: &Arc<Side>, drain: drain::Watch) -> Setup {
    let local = tcp.local_addr().map_err(|source| ProxyError::Connect { addr: client, source })?;
    let redirected = orig_dst::redirected_dst(&tcp);
    // Inbound is for this workload: a packet addressed elsewhere that reached the redirect (a
    // neighbour on the same link can send one) must not make the proxy dial out for it.
    if let Some(t) = redirected.filter(|t| !is_local(t.ip(), local.ip())) {
        return Err(ProxyError::NotLocal(t));
    }
    let target = redirected.or(side.config.inbound.target_addr);
    crate::record::note(|r| r.target = target.map(|t| t.to_string()));
    let mut conn =
        Conn { client, local, target, tls: Tls::NoIdentity(NoTlsReason::NoTlsFromRemote), client_id: None, from_peer: false, side: side.clone(), drain };
    let io = PrefixedIo::new(Bytes::new(), tcp);
    let protocol = conn.protocol()?;
    if protocol == Some(Protocol::Opaque) {
        conn.tls = Tls::NoIdentity(NoTlsReason::PortSkipped);
        return conn.opaque(io, Bytes::new()).await;
    }
    let outcome = conn.detect(io, protocol).await?;
    let d = match outcome {
        Outcome::Closed => return Ok(None),
        Outcome::Silent(io) => return conn.speak_first(io, protocol).await,
        Outcome::Detected(d) => d,
    };
    match d.protocol {
        Detected::Tls { sni } => {
            // TLS for this proxy's name is terminated. So is TLS for another mesh identity: this
            // proxy answers with its own certificate, and the client's check of the presented
            // identity fails with both names in its error, instead of the TLS reaching the app.
            let for_mesh = |id: &crate::identity::Identity| sni.as_deref().is_some_and(|s| s == &*id.name || knit_identity::is_mesh_identity(s));
            let ours = side.dialer.identity.as_ref().filter(|id| for_mesh(id)).and_then(|id| id.current());
            let Some(creds) = ours else {
                // The client chooses its SNI: the label's values are bounded.
                conn.tls = Tls::Opaque { sni: sni.map(|s| side.hostnames.get(&s)) };
                // A port whose policy says HTTP is served as HTTP, whatever arrived: TLS the
                // proxy cannot read would skip its routes and per-route authorization.
                if matches!(protocol, Some(Protocol::Http1 | Protocol::Http2 | Protocol::Grpc)) {
                    return conn.serve_http(d.io, HttpVersion::Http1);
                }
                return conn.opaque(d.io, Bytes::new()).await;
            };
            let log = side.dialer.log.clone();
            let (tls, client_id, transport) = crate::tls::accept(d.io, creds, client, &side.metrics.identity, &log).await?;
            conn.tls = Tls::Inbound { client_id: client_id.clone() };
            conn.from_peer = client_id.is_some();
            let io = PrefixedIo::new(Bytes::new(), tls);
            // The transport header (which names a local port and the protocol) is a peer
            // proxy's: only from a client that proved a mesh identity, as Linkerd requires.
            if transport && client_id.is_none() {
                side.metrics.identity.handshake_failed(side.direction, "direct_without_identity");
                return Err(ProxyError::DirectWithoutTls);
            }
            crate::record::note(|r| r.client_id.clone_from(&client_id));
            conn.client_id = client_id;
            if transport {
                return conn.direct(io).await;
            }
            conn.after_tls(io, protocol).await
        }
        // As in Linkerd, a transport header (which names a local port) is only honoured from
        // an authenticated peer once this proxy has an identity.
        Detected::TransportHeader if side.dialer.identity.is_some() => {
            side.metrics.identity.handshake_failed(side.direction, "direct_without_tls");
            Err(ProxyError::DirectWithoutTls)
        }
        Detected::TransportHeader => {
            conn.from_peer = true;
            conn.direct(d.io).await
        }
        other => conn.by_protocol(d.io, other, protocol).await,
    }
}

impl Conn {
    /// The protocol the target port's policy names; `None` before a transport header names the
    /// port.
    fn protocol(&self) -> Result<Option<Protocol>, ProxyError> {
        let Some(t) = self.target else { return Ok(None) };
        if self.side.is_own(t) {
            return Err(ProxyError::Loop(t));
        }
        Ok(Some(self.side.discovery.inbound(t.port()).protocol))
    }

    fn timeouts(&self, protocol: Option<Protocol>) -> Timeouts {
        let d = &self.side.config.detect;
        match protocol {
            Some(Protocol::Detect { timeout }) => Timeouts { silent: Some(d.silent_timeout), total: timeout },
            None => Timeouts { silent: Some(d.silent_timeout), total: d.timeout },
            Some(_) => Timeouts { silent: None, total: d.timeout },
        }
    }

    async fn detect<I: AsyncRead + Unpin>(&self, io: PrefixedIo<I>, protocol: Option<Protocol>) -> Result<Outcome<I>, ProxyError> {
        let side = &self.side;
        detect::detect(io, self.timeouts(protocol), &side.metrics.detect, side.direction)
            .await
            .map_err(|source| ProxyError::Connect { addr: self.client, source })
    }

    /// The plaintext inside mesh TLS that carried no transport header: handled by the
    /// protocol, as a plaintext connection would be.
    async fn after_tls<I>(self, io: PrefixedIo<I>, protocol: Option<Protocol>) -> Setup
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match self.detect(io, protocol).await? {
            Outcome::Closed => Ok(None),
            Outcome::Silent(io) => self.speak_first(io, protocol).await,
            // A transport header must be negotiated with ALPN inside TLS: opaque otherwise.
            Outcome::Detected(d) if d.protocol == Detected::TransportHeader => self.opaque(d.io, Bytes::new()).await,
            Outcome::Detected(d) => self.by_protocol(d.io, d.protocol, protocol).await,
        }
    }

    /// A detected stream, handled as the port's protocol says: HTTP ports are served as HTTP
    /// whatever arrived (hyper answers what is not HTTP with 400); others by what was detected.
    async fn by_protocol<I>(self, io: PrefixedIo<I>, detected: Detected, protocol: Option<Protocol>) -> Setup
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http_port = matches!(protocol, Some(Protocol::Http1 | Protocol::Http2 | Protocol::Grpc));
        match detected {
            _ if matches!(protocol, Some(Protocol::Tls | Protocol::Opaque)) => self.opaque(io, Bytes::new()).await,
            Detected::Http2 => self.serve_http(io, HttpVersion::Http2),
            Detected::Http1 => self.serve_http(io, HttpVersion::Http1),
            _ if http_port => self.serve_http(io, HttpVersion::Http1),
            _ => self.opaque(io, Bytes::new()).await,
        }
    }

    /// A client that said nothing on a detected port: once the connection is authorized, the
    /// application is connected and whoever speaks first decides. A connection that would not be
    /// authorized as opaque TCP waits for the client instead (its HTTP may be, per route).
    async fn speak_first<I>(self, mut io: PrefixedIo<I>, protocol: Option<Protocol>) -> Setup
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(target) = self.target else {
            // A direct connection that sent nothing is not a peer proxy's; nothing to forward to.
            return Err(ProxyError::NoTarget);
        };
        let wait_for_client = Timeouts { silent: None, total: self.timeouts(protocol).total };
        if let Err(denied) = self.authorize_tcp(target.port()) {
            let side = self.side.clone();
            return match detect::detect(io, wait_for_client, &side.metrics.detect, side.direction).await {
                Ok(Outcome::Detected(d)) if matches!(d.protocol, Detected::Http1 | Detected::Http2) => self.by_protocol(d.io, d.protocol, protocol).await,
                _ => Err(denied),
            };
        }
        let mut server = self.connect_app(target).await?;
        let speaker = detect::first_speaker(&mut io, &mut server).await.map_err(|source| ProxyError::Connect { addr: self.client, source })?;
        match speaker {
            Speaker::Closed => Ok(None),
            Speaker::Server(greeting) => self.copy(io, server, greeting, target),
            Speaker::Client(first) => {
                let io = PrefixedIo::new(first, io.into_parts().1);
                let side = self.side.clone();
                match detect::detect(io, wait_for_client, &side.metrics.detect, side.direction).await {
                    // HTTP after all: the application connection is dropped unused.
                    Ok(Outcome::Detected(d)) if matches!(d.protocol, Detected::Http1 | Detected::Http2) => self.by_protocol(d.io, d.protocol, protocol).await,
                    Ok(Outcome::Detected(d)) => self.copy(d.io, server, Bytes::new(), target),
                    Ok(_) => Ok(None),
                    Err(source) => Err(ProxyError::Connect { addr: self.client, source }),
                }
            }
        }
    }

    /// A peer proxy's direct connection: the transport header names the port on this workload
    /// and the session protocol, so no detection is needed.
    async fn direct<I>(mut self, io: PrefixedIo<I>) -> Setup
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (header, io) = read_header(io, self.client).await?;
        if let Some(name) = header.name {
            return Box::pin(self.gateway(&name, header.port, header.protocol, io)).await;
        }
        let target = SocketAddr::new(self.local.ip(), header.port);
        // A header may name any local port, but never one of this proxy's own (admin, tap,
        // inbound, outbound): that would hand a remote peer a loopback client's powers.
        if self.side.is_own(target) {
            return Err(ProxyError::Loop(target));
        }
        self.target = Some(target);
        crate::record::note(|r| r.target = Some(target.to_string()));
        match header.protocol {
            Some(SessionProtocol::Http1) => self.serve_http(io, HttpVersion::Http1),
            Some(SessionProtocol::Http2) => self.serve_http(io, HttpVersion::Http2),
            None => self.opaque(io, Bytes::new()).await,
        }
    }

    /// A header that names `name:port`: a peer asks this proxy, as a multicluster gateway, to
    /// forward the connection to that Service (`gateway.rs`). The connection is authorized by
    /// the policy of the port it arrived on, the gateway's own.
    async fn gateway<I>(self, name: &str, port: u16, protocol: Option<SessionProtocol>, io: PrefixedIo<I>) -> Setup
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(outbound) = self.side.gateway.clone() else {
            return Err(HeaderError::Malformed("the header names a destination (gateway forwarding), and this proxy is not a gateway").into());
        };
        // Who asks, before what it asks for: a caller the gateway's policy refuses learns nothing
        // of which names it would forward.
        let (Some(own), Some(client_id)) = (self.side.dialer.identity.as_ref(), self.client_id.clone()) else {
            return Err(ProxyError::DirectWithoutTls);
        };
        self.authorize_tcp(self.local.port())?;
        let target = match crate::gateway::target(name, port, &self.side.config.inbound.gateway_suffixes) {
            Ok(t) => t,
            // HTTP: each request is answered 404, so the client's application sees why.
            Err(ProxyError::GatewayDomain { target, reason }) if protocol.is_some() => {
                let io = CountingIo::metered(io, &self.side.metrics.tcp, self.src_labels(self.local));
                return crate::outbound::gateway_refused(io, self.client, protocol, (target, reason), &outbound, self.drain);
            }
            Err(e) => return Err(e),
        };
        crate::record::note(|r| r.target = Some(target.to_string()));
        let hop = crate::gateway::Hop { own: own.name.clone(), client: self.client, client_id, target, inbound: self.side.clone(), port: self.local.port() };
        let io = CountingIo::metered(io, &self.side.metrics.tcp, self.src_labels(self.local));
        crate::outbound::gateway(io, self.client, protocol, hop, &outbound, self.drain).await
    }

    fn target(&self) -> Result<SocketAddr, ProxyError> {
        let t = self.target.ok_or(ProxyError::NoTarget)?;
        if self.side.is_own(t) {
            return Err(ProxyError::Loop(t));
        }
        Ok(t)
    }

    fn src_labels(&self, target: SocketAddr) -> TcpLabels {
        TcpLabels {
            target: HttpLabels {
                direction: self.side.direction,
                authority: None,
                target_addr: target,
                tls: self.tls.clone(),
                dst: Default::default(),
                policy: None,
            },
            peer: Peer::Src,
        }
    }

    fn serve_http<I>(self, io: PrefixedIo<I>, version: HttpVersion) -> Setup
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let target = self.target()?;
        let io = CountingIo::metered(io, &self.side.metrics.tcp, self.src_labels(target));
        let ctx = Ctx {
            side: self.side.clone(),
            client: self.client,
            dest: Dest::Inbound(target),
            client_id: self.client_id,
            tls: self.tls,
            from_peer: self.from_peer,
            activity: Default::default(),
            golden: Default::default(),
            gateway: None,
        };
        Ok(Some(http::serving(io, version, ctx, self.drain)))
    }

    /// Forwards the connection byte for byte to the application, once it is authorized.
    async fn opaque<I>(self, io: PrefixedIo<I>, greeting: Bytes) -> Setup
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let target = self.target()?;
        self.authorize_tcp(target.port())?;
        let server = self.connect_app(target).await?;
        self.copy(io, server, greeting, target)
    }

    async fn connect_app(&self, target: SocketAddr) -> Result<ClientIo, ProxyError> {
        self.side.dialer.dial(&Endpoint::plain(target), None, None).await
    }

    /// Copies the connection's bytes to the application's, `greeting` (its first bytes) first.
    fn copy<I>(self, io: PrefixedIo<I>, mut server: ClientIo, greeting: Bytes, target: SocketAddr) -> Setup
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut client_io = CountingIo::metered(io, &self.side.metrics.tcp, self.src_labels(target));
        crate::record::note(|r| {
            r.protocol = Some(if matches!(self.tls, Tls::Opaque { .. }) { "tls" } else { "opaque" });
            r.endpoint = Some(target);
        });
        let (client, drain) = (self.client, self.drain);
        serving(async move {
            // Held while bytes move: the proxy's drain waits for the connection.
            let _drain = drain;
            if !greeting.is_empty() {
                client_io.write_all(&greeting).await.map_err(|source| ProxyError::Connect { addr: client, source })?;
            }
            match crate::tcp::forward(&mut client_io, &mut server).await {
                Ok(bytes) => crate::record::note(|r| r.bytes = Some(bytes)),
                Err(e) => {
                    client_io.set_errno(e.raw_os_error());
                    tracing::debug!(%client, %target, error = %e, "opaque connection ended with an error");
                }
            }
            Ok(())
        })
    }

    /// An opaque connection is authorized once, as a whole; a refused one is closed.
    fn authorize_tcp(&self, port: u16) -> Result<(), ProxyError> {
        authorize(&self.side, self.client, self.client_id.as_deref(), matches!(self.tls, Tls::Inbound { .. }), port)
    }
}

/// Authorizes a client on a local port by the port's policy as a whole (no routes): its
/// identity and network. Counted in `tcp_authz_allow`/`tcp_authz_deny`; refused, the reason.
pub(crate) fn authorize(side: &Side, client: SocketAddr, client_id: Option<&str>, tls: bool, port: u16) -> Result<(), ProxyError> {
    use crate::metrics::route::{AuthzLabels, PolicyLabels};
    let policy = side.discovery.inbound(port);
    let peer = crate::policy::inbound::Client { addr: client.ip(), identity: client_id.map(str::to_string), tls };
    let server = crate::http::authorize::server_labels(&policy, port);
    let labels_id = client_id.unwrap_or_default().to_string();
    match policy.authorize_tcp(&peer) {
        Ok(permit) => {
            let authz = &permit.authz;
            crate::record::note(|r| r.authz = Some(authz.name.clone()));
            let labels = AuthzLabels { client_id: labels_id, policy: PolicyLabels::new(server, ["", "", ""], [&authz.group, &authz.kind, &authz.name]) };
            side.metrics.route.tcp_authz_allow.get_or_create(&labels).inc();
            Ok(())
        }
        Err(denied) => {
            let labels = AuthzLabels { client_id: labels_id, policy: PolicyLabels::new(server, ["", "", ""], ["", "", ""]) };
            side.metrics.route.tcp_authz_deny.get_or_create(&labels).inc();
            let message = denied.to_string();
            let allowed = match &denied {
                crate::policy::inbound::Denied::Unauthorized { allowed, .. } => allowed.as_str(),
                crate::policy::inbound::Denied::NoRoute => "",
            };
            tracing::info!(%client, identity = client_id.unwrap_or("-"), %message, %allowed, "connection denied by inbound policy");
            Err(ProxyError::Unauthorized(message))
        }
    }
}

/// Whether an inbound connection's original destination is this workload: the address it was
/// accepted on, or loopback (a workload that calls itself through its own proxy).
fn is_local(target: IpAddr, local: IpAddr) -> bool {
    let target = target.to_canonical();
    target == local.to_canonical() || target.is_loopback() || crate::loops::is_local(target)
}

/// Reads a complete transport header within [`HEADER_TIMEOUT`] in all; the bytes after it stay
/// in front of the stream.
async fn read_header<I>(io: PrefixedIo<I>, peer: SocketAddr) -> Result<(TransportHeader, PrefixedIo<I>), ProxyError>
where
    I: AsyncRead + Unpin,
{
    let deadline = Instant::now() + HEADER_TIMEOUT;
    let (prefix, mut inner) = io.into_parts();
    let mut buf = BytesMut::from(&prefix[..]);
    loop {
        match transport_header::decode(&buf)? {
            Decoded::Complete(header, used) => {
                let rest = buf.split_off(used).freeze();
                return Ok((header, PrefixedIo::new(rest, inner)));
            }
            Decoded::Incomplete => match tokio::time::timeout_at(deadline, inner.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return Err(HeaderError::Malformed("connection ended inside the header").into()),
                Ok(Ok(_)) => {}
                Ok(Err(source)) => return Err(ProxyError::Connect { addr: peer, source }),
                // A peer proxy writes the whole header at once; taking this long means it is not one.
                Err(_) => return Err(HeaderError::Malformed("timed out inside the header").into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_workloads_addresses_are_inbound_targets() {
        let pod: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(is_local(pod, pod));
        assert!(is_local("::ffff:10.0.0.5".parse().unwrap(), pod), "in any spelling");
        assert!(is_local("127.0.0.1".parse().unwrap(), pod) && is_local("::1".parse().unwrap(), pod), "the workload calling itself");
        // TEST-NET addresses: never local here.
        for other in ["192.0.2.1", "198.51.100.7", "169.254.169.254"] {
            assert!(!is_local(other.parse().unwrap(), pod), "{other}");
        }
    }
}
