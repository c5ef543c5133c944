//! The logical destination of an outbound connection (or, in local mode, of one HTTP request):
//! its target and the policy that says how its bytes are handled.
//!
//! Where the policy comes from, first match wins:
//! 1. the static destination table names the target: its endpoints, balanced (a local override
//!    needs no control plane);
//! 2. a policy service is configured: `OutboundPolicies.Watch(target)`, followed for as long as
//!    the connection lives, so a route or split edited while it is open applies to its next
//!    request. When the control plane does not know the target (`NotFound`), the fallback below;
//! 3. the fallback: everything to the original destination (or, for a name, the address DNS
//!    gives), detected unless its port is an opaque one. An address the control plane knows as a
//!    meshed workload (`GetProfile`'s endpoint, e.g. a pod IP behind a headless Service) is
//!    reached through its proxy over mTLS, as Linkerd's proxy does.

use crate::{
    discovery::{Answer, Target},
    error::ProxyError,
    http::Side,
    policy::outbound::OutboundPolicy,
    resolve::Resolver,
    retry::Budget,
};
use knit_core::destination::{Authority, Endpoint};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::{watch, OnceCell};

pub struct Logical {
    pub target: Target,
    /// The name the traffic was addressed by (a port forward's, a request's `Host`), for the
    /// `authority` label; `None` for an original destination.
    pub authority: Option<Authority>,
    /// Retries to this destination may add at most a fifth to its load, however many routes retry.
    pub budget: Arc<Budget>,
    source: Source,
    /// A gateway's target: served only when the control plane (or the static table) knows it,
    /// never by the fallback (a peer must not make the gateway dial whatever DNS says).
    known_only: bool,
}

enum Source {
    /// The static table's policy, or the fallback when no policy service is configured.
    Fixed(Arc<OutboundPolicy>),
    Discovered {
        rx: watch::Receiver<Answer<OutboundPolicy>>,
        /// Made the first time the control plane says `NotFound`.
        fallback: OnceCell<Arc<OutboundPolicy>>,
        /// How long the first answer was waited for, for the error when there is none.
        waited: Duration,
    },
}

impl Logical {
    /// Finds where the policy of `target` comes from, waiting at most the discovery initial
    /// timeout for the control plane's first answer.
    pub async fn resolve(side: &Side, target: Target, authority: Option<Authority>) -> Result<Self, ProxyError> {
        Self::resolve_with(side, target, authority, false).await
    }

    /// A multicluster gateway's target `name:port`, which must be a Service the control plane
    /// knows (`ProxyError::GatewayDomain` otherwise, when its answer says so).
    pub async fn resolve_gateway(side: &Side, target: Authority) -> Result<Self, ProxyError> {
        Self::resolve_with(side, Target::Authority(target.clone()), Some(target), true).await
    }

    async fn resolve_with(side: &Side, target: Target, authority: Option<Authority>, known_only: bool) -> Result<Self, ProxyError> {
        let key = match &target {
            Target::Authority(a) => a.clone(),
            Target::Addr(a) => Authority::from_addr(*a),
        };
        if let Some((policy, budget)) = side.resolver.fixed(&key, || OutboundPolicy::static_to(key.clone(), detect_timeout(side, key.port))) {
            return Ok(Self { target, authority, budget, source: Source::Fixed(policy), known_only });
        }
        if known_only && !side.discovery.has_policy() {
            return Err(ProxyError::GatewayDomain {
                target: key.to_string(),
                reason: "no policy service is configured, and the destination table does not name it",
            });
        }
        if !side.discovery.has_policy() {
            let policy = fallback(side, &target).await?;
            return Ok(Self { target, authority, budget: Arc::new(Budget::default_per_destination()), source: Source::Fixed(policy), known_only });
        }
        let (rx, budget) = side.discovery.outbound(&target).await;
        let waited = side.discovery.config().initial_timeout;
        Ok(Self { target, authority, budget, source: Source::Discovered { rx, fallback: OnceCell::new(), waited }, known_only })
    }

    /// The policy now. Errors: the control plane sent an invalid one, or has not answered.
    pub async fn policy(&self, side: &Side) -> Result<Arc<OutboundPolicy>, ProxyError> {
        let (rx, fallback_cell, waited) = match &self.source {
            Source::Fixed(p) => return Ok(p.clone()),
            Source::Discovered { rx, fallback, waited } => (rx, fallback, *waited),
        };
        let answer = rx.borrow().clone();
        match answer {
            Answer::Found(p) => Ok(p),
            Answer::Invalid(reason) => Err(ProxyError::InvalidPolicy(reason)),
            Answer::Pending => Err(ProxyError::DiscoveryTimeout { what: format!("the outbound policy of {}", self.target), timeout: waited }),
            Answer::NotFound if self.known_only => {
                Err(ProxyError::GatewayDomain { target: self.target.to_string(), reason: "the control plane knows no Service by that name" })
            }
            Answer::NotFound => fallback_cell.get_or_try_init(|| fallback(side, &self.target)).await.cloned(),
        }
    }

    /// The original destination, when the target is one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.target {
            Target::Addr(a) => Some(a),
            Target::Authority(_) => None,
        }
    }
}

/// How long detection waits for an HTTP preamble on `port`; `None` for an opaque port, which is
/// never detected.
fn detect_timeout(side: &Side, port: u16) -> Option<Duration> {
    let d = &side.config.detect;
    (!d.opaque_ports.contains(&port)).then_some(d.timeout)
}

/// Everything to the original destination (through its proxy when the control plane knows it
/// as a meshed workload), or to the address a name resolves to.
async fn fallback(side: &Side, target: &Target) -> Result<Arc<OutboundPolicy>, ProxyError> {
    let endpoint = match target {
        Target::Addr(a) => side.discovery.endpoint_at(*a).await.unwrap_or_else(|| Endpoint::plain(*a)),
        Target::Authority(a) => Resolver::lookup(a).await?,
    };
    let port = endpoint.addr.port();
    Ok(Arc::new(OutboundPolicy::forward_to(endpoint, detect_timeout(side, port))))
}
