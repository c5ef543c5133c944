//! `knit-proxy`: Knit's sidecar proxy.
//!
//! A [`Proxy`] binds its listeners first ([`Proxy::bind`], so tests and the binary learn the
//! addresses before any traffic), then [`Proxy::run`]s until its shutdown future completes or
//! `POST /shutdown` asks, and drains: listeners close, in-flight requests and connections get
//! the grace period to finish.
//!
//! The path of a connection is read top to bottom in [`inbound`] and [`outbound`]; both hand
//! HTTP to [`http`], opaque bytes to [`tcp`], and decide the protocol with [`detect`].

pub mod accept;
pub mod accrual;
pub mod admin;
pub mod balance;
pub mod config;
pub mod control;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod error;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod io;
pub mod log;
pub mod loops;
pub mod memory;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod policy;
pub mod ratelimit;
pub mod record;
pub mod resolve;
pub mod retry;
pub mod route;
pub mod tap;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod wait;

use config::Config;
use knit_core::destination::Authority;
use metrics::{Direction, Metrics};
use std::{
    future::Future,
    io as stdio,
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc},
};
use tokio::{net::TcpListener, sync::mpsc};

/// How long after the proxy is ready its start-up code is let go (the first requests' code
/// has run by then, and the control plane's first answers have arrived).
const STARTUP_SETTLES: std::time::Duration = std::time::Duration::from_secs(2);

/// Distinct `hostname` label values a proxy exports before the rest share `overflow`.
const HOSTNAME_LABELS: usize = 1_000;

/// A proxy whose listeners are bound but not yet serving.
pub struct Proxy {
    /// How to reach a control plane that serves TLS.
    control_tls: Option<Arc<control::ControlTls>>,
    config: Arc<Config>,
    metrics: Metrics,
    log: Option<log::LogLevel>,
    inbound: TcpListener,
    outbound: TcpListener,
    forwards: Vec<(TcpListener, Authority)>,
    admin: TcpListener,
    tap: Option<TcpListener>,
}

/// The addresses a bound proxy listens on.
#[derive(Clone, Debug)]
pub struct Addrs {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// The tap server, when `KNIT_PROXY_TAP_SVC_NAME` turns it on.
    pub tap: Option<SocketAddr>,
    /// Each port forward's listener and the destination it forwards to.
    pub forwards: Vec<(SocketAddr, Authority)>,
}

/// TLS for the control plane, when the configuration names its identity: checked here, so that
/// a name without trust anchors stops start-up with the reason.
fn control_tls(config: &Config) -> stdio::Result<Option<Arc<control::ControlTls>>> {
    let d = &config.discovery;
    let addrs: Vec<&control::ControlAddr> = d.destination_addr.iter().chain(&d.policy_addr).chain(config.identity.as_ref().map(|i| &i.svc_addr)).collect();
    if addrs.iter().all(|a| a.tls_name.is_none()) {
        return Ok(None);
    }
    let invalid = |e: String| stdio::Error::new(stdio::ErrorKind::InvalidInput, e);
    let identity = config
        .identity
        .as_ref()
        .ok_or_else(|| invalid("a control-plane TLS name (KNIT_PROXY_*_SVC_NAME) needs the identity configuration (KNIT_PROXY_IDENTITY_*)".into()))?;
    let tls = Arc::new(control::ControlTls::new(identity.trust_anchors.clone()).map_err(|e| invalid(e.to_string()))?);
    for a in addrs {
        control::check(a, Some(&tls)).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(Some(tls))
}

async fn bind(addr: SocketAddr, what: &str) -> stdio::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| stdio::Error::new(e.kind(), format!("binding the {what} listener on {addr}: {e}")))
}

impl Proxy {
    /// Binds every listener. `log` is the process's log-level handle when this proxy owns the
    /// process (the binary); embedded proxies pass `None`.
    pub async fn bind(config: Config, log: Option<log::LogLevel>) -> stdio::Result<Self> {
        let inbound = bind(config.inbound.listen_addr, "inbound").await?;
        let outbound = bind(config.outbound.listen_addr, "outbound").await?;
        let admin = bind(config.admin.listen_addr, "admin").await?;
        let tap = match &config.tap {
            Some(t) if cfg!(feature = "tap") => Some(bind(t.listen_addr, "tap").await?),
            Some(_) => {
                tracing::warn!("KNIT_PROXY_TAP_SVC_NAME is set, but this knit-proxy is built without tap: no tap server");
                None
            }
            None => None,
        };
        let mut forwards = Vec::new();
        for (port, authority) in &config.outbound.port_forwards {
            let addr = SocketAddr::new(config.outbound.listen_addr.ip(), *port);
            forwards.push((bind(addr, &format!("port-forward {authority}")).await?, authority.clone()));
        }
        let control_tls = control_tls(&config)?;
        if let Some(t) = &config.trace {
            trace::export::check(&t.collector, config.identity.is_some()).map_err(|e| stdio::Error::new(stdio::ErrorKind::InvalidInput, e.to_string()))?;
        }
        Ok(Self { config: Arc::new(config), control_tls, metrics: Metrics::new(), log, inbound, outbound, forwards, admin, tap })
    }

    pub fn addrs(&self) -> Addrs {
        let addr = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        Addrs {
            inbound: addr(&self.inbound),
            outbound: addr(&self.outbound),
            admin: addr(&self.admin),
            tap: self.tap.as_ref().map(addr),
            forwards: self.forwards.iter().map(|(l, a)| (addr(l), a.clone())).collect(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves until `shutdown` completes or the admin server's `/shutdown` is called, then drains.
    /// Returns whether everything in flight finished within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let addrs = self.addrs();
        let (signal, watch) = drain::channel();
        let (shutdown_tx, mut shutdown_rx) = mpsc::channel(1);
        // Ready once it has a certificate (with mesh identity) and its inbound policies.
        let ready = Arc::new(AtomicBool::new(false));
        let admin =
            admin::Admin { config: self.config.clone(), metrics: self.metrics.clone(), log: self.log.clone(), ready: ready.clone(), shutdown: shutdown_tx };
        let admin_task = tokio::spawn(admin::serve(self.admin, Arc::new(admin)));

        let identity = self.config.identity.clone().map(|cfg| identity::spawn(cfg, self.control_tls.clone(), self.metrics.identity.clone()));
        let log = Arc::new(tls::LogOnce::default());
        let taps = tap::Taps::new(self.config.tap.as_ref().map_or(100, |t| t.max_rps));
        let discovery =
            discovery::Discovery::spawn(self.config.discovery.clone(), self.control_tls.as_ref()).expect("control-plane channels are checked by Proxy::bind");
        let own =
            loops::OwnListeners::new(addrs.inbound, [addrs.outbound, addrs.admin].into_iter().chain(addrs.tap).chain(addrs.forwards.iter().map(|(a, _)| *a)));
        let resolver = Arc::new(resolve::Resolver::new(&self.config.outbound.endpoints));
        let tracer = self.config.trace.as_ref().map(|cfg| {
            let queue = trace::export::spawn(cfg, identity.clone(), self.metrics.trace.clone()).expect("the collector is checked by Proxy::bind");
            Arc::new(trace::Tracer::new(queue, self.metrics.trace.clone(), cfg.sample_untraced))
        });
        let side = |direction, timeout, gateway| {
            let dialer = tcp::Dialer { direction, timeout, metrics: self.metrics.clone(), identity: identity.clone(), log: log.clone() };
            Arc::new(http::Side {
                direction,
                clients: http::Clients::new(dialer.clone(), &self.config.http),
                dialer,
                metrics: self.metrics.clone(),
                resolver: resolver.clone(),
                discovery: discovery.clone(),
                taps: taps.clone(),
                config: self.config.clone(),
                own: own.clone(),
                gateway,
                in_flight: Arc::new(tokio::sync::Semaphore::new(self.config.http.max_in_flight_requests)),
                hostnames: metrics::route::Bounded::new(HOSTNAME_LABELS),
                tracer: tracer.clone(),
            })
        };
        let outbound = side(Direction::Outbound, self.config.outbound.connect_timeout, None);
        let gateway = (!self.config.inbound.gateway_suffixes.is_empty()).then(|| outbound.clone());
        let inbound = side(Direction::Inbound, self.config.inbound.connect_timeout, gateway);

        // Listeners are bound (connections queue in the backlog) but not served until the proxy
        // has a certificate, as Linkerd's proxy does: nothing is ever proxied without identity.
        tokio::pin!(shutdown);
        // Likewise, the inbound ports named at start-up wait for their policy.
        let started = async {
            if let Some(mut id) = identity.clone() {
                tracing::info!(identity = %id.name, "waiting for a certificate from the identity service");
                id.ready().await;
            }
            discovery.inbound_ready().await;
        };
        tokio::select! {
            () = started => {
                ready.store(true, std::sync::atomic::Ordering::Release);
                // Once serving, start-up's code is not needed again (`memory.rs`). Only in a
                // process of its own: an embedded proxy leaves its host's pages alone.
                if self.log.is_some() && self.config.release_startup_code {
                    tokio::spawn(async {
                        tokio::time::sleep(STARTUP_SETTLES).await;
                        let _ = tokio::task::spawn_blocking(memory::release_startup_code).await;
                    });
                }
            }
            _ = &mut shutdown => {
                admin_task.abort();
                return true;
            }
        }

        // Inbound and outbound each get half: remote clients holding connections to the
        // inbound port cannot keep the application's own calls waiting, nor the reverse.
        if !self.config.http.park_after.is_zero() {
            tokio::spawn(memory::trim_loop());
        }
        let half = (accept::data_connections(self.config.max_connections) / 2).max(1);
        let (inbound_limit, outbound_limit) = (accept::Limit::new(half), accept::Limit::new(half));
        tracing::debug!(max = half, "connection limit of each direction");
        tokio::spawn(accept::accept_loop(self.inbound, inbound_limit, Some(watch.clone()), "inbound", {
            let side = inbound.clone();
            move |tcp, client, permit, drain| {
                let side = side.clone();
                async move {
                    let Some(drain) = drain else { return };
                    inbound::serve_connection(tcp, client, side, drain).await;
                    drop(permit);
                }
            }
        }));
        let outbound_listeners = std::iter::once((self.outbound, None)).chain(self.forwards.into_iter().map(|(l, a)| (l, Some(a))));
        for (listener, forward) in outbound_listeners {
            let side = outbound.clone();
            tokio::spawn(accept::accept_loop(listener, outbound_limit.clone(), Some(watch.clone()), "outbound", move |tcp, client, permit, drain| {
                let (side, forward) = (side.clone(), forward.clone());
                async move {
                    let Some(drain) = drain else { return };
                    outbound::serve_connection(tcp, client, forward, side, drain).await;
                    drop(permit);
                }
            }));
        }
        drop(watch);
        // Tap ends with the process, not with draining: it carries no traffic.
        let tap_task = match (self.tap, &self.config.tap, &identity) {
            (Some(listener), Some(cfg), Some(id)) => {
                Some(tokio::spawn(tap::serve(listener, taps, id.clone(), cfg.svc_name.clone(), self.metrics.identity.clone())))
            }
            _ => None,
        };
        tracing::info!(inbound = %addrs.inbound, outbound = %addrs.outbound, admin = %addrs.admin, "serving");

        tokio::select! {
            _ = &mut shutdown => {}
            _ = shutdown_rx.recv() => tracing::info!("shutdown requested through the admin server"),
        }
        ready.store(false, std::sync::atomic::Ordering::Release);
        let grace = self.config.shutdown_grace_period;
        tracing::info!(grace = ?grace, "draining: listeners closed, waiting for in-flight work");
        let drained = signal.drain(grace).await;
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!(grace = ?grace, "grace period ended with work still in flight");
        }
        admin_task.abort();
        if let Some(t) = tap_task {
            t.abort();
        }
        drained
    }
}
