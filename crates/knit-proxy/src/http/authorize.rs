//! Inbound requests against their port's server policy, before anything reaches the application:
//! the route, the authorization, the local rate limit, then the route's filters
//! (LINKERD-WIRE.md §4.1). A refusal says which policy refused and what the proxy saw.

use super::{Ctx, Dest, Plan, Refused, Routed};
use crate::{
    error::ProxyError,
    metrics::{
        route::{AuthzLabels, PolicyLabels, RateLimitLabels, ServerLabels},
        Tls,
    },
    policy::inbound::{Client, Denied, ServerPolicy},
    route::RequestInfo,
};
use http::Request;
use std::{sync::Arc, time::Instant};

pub(super) fn client(ctx: &Ctx) -> Client {
    Client { addr: ctx.client.ip(), identity: ctx.client_id.clone(), tls: matches!(ctx.tls, Tls::Inbound { .. }) }
}

pub(crate) fn server_labels(policy: &ServerPolicy, port: u16) -> ServerLabels {
    let meta = policy.meta();
    ServerLabels { srv_group: meta.group.clone(), srv_kind: meta.kind.clone(), srv_name: meta.name.clone(), srv_port: port.to_string() }
}

// `Refused` is the pair every planner returns; refusals are rare, so its size costs little.
#[allow(clippy::result_large_err)]
pub(super) fn plan<B>(req: &mut Request<B>, ctx: &Ctx) -> Result<Plan, Refused> {
    let Dest::Inbound(target) = &ctx.dest else { return Err((ProxyError::NoTarget, None)) };
    let mut routed = Routed::to(knit_core::destination::Endpoint::plain(*target));
    let port = target.port();
    let policy = ctx.side.discovery.inbound(port);
    let client = client(ctx);
    let m = &ctx.side.metrics.route;
    let server = server_labels(&policy, port);
    let permit = match policy.authorize_http(&RequestInfo::new(req), &client) {
        Ok(p) => p,
        Err(Denied::NoRoute) => {
            m.route_not_found.get_or_create(&server).inc();
            let e =
                ProxyError::RouteNotFound { target: format!("server {}", server.srv_name), method: req.method().clone(), path: req.uri().path().to_string() };
            return Err((e, Some(routed)));
        }
        Err(Denied::Unauthorized { message, route, allowed }) => {
            let labels = PolicyLabels::new(server, [&route.group, &route.kind, &route.name], ["", "", ""]);
            m.authz_deny.get_or_create(&AuthzLabels { client_id: client.identity.clone().unwrap_or_default(), policy: labels.clone() }).inc();
            tracing::info!(client = %ctx.client, identity = client.identity.as_deref().unwrap_or("-"), %message, %allowed, "request denied by inbound policy");
            routed.policy = Some(Arc::new(labels));
            return Err((ProxyError::Unauthorized(message), Some(routed)));
        }
    };
    let (route, authz) = (&permit.route, &permit.authz);
    let labels = PolicyLabels::new(server.clone(), [&route.group, &route.kind, &route.name], [&authz.group, &authz.kind, &authz.name]);
    m.authz_allow.get_or_create(&AuthzLabels { client_id: client.identity.clone().unwrap_or_default(), policy: labels.clone() }).inc();
    routed.policy = Some(Arc::new(labels));
    if let Some(limit) = policy.rate_limit() {
        if let Err(limited) = limit.check(client.identity.as_deref(), Instant::now()) {
            m.local_ratelimit.get_or_create(&RateLimitLabels { server, rate_limit: limited.which.to_string() }).inc();
            let e = ProxyError::RateLimited { policy: policy.meta().name.clone(), which: limited.which, retry_after: limited.retry_after };
            return Err((e, Some(routed)));
        }
    }
    // Inbound routes have no response-header filters; the list stays empty.
    let mut response_headers = Vec::new();
    match super::logical::apply_filters(permit.filters, req, &mut response_headers) {
        Ok(None) => {}
        Ok(Some(rsp)) => return Ok(Plan::Respond { rsp, target: Some(routed) }),
        Err(e) => return Err((e, Some(routed))),
    }
    Ok(Plan::Endpoint(routed))
}
