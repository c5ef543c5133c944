//! Policy from the control plane, as plain data the request path decides on: what an outbound
//! destination's routes, backends and balancers are ([`outbound`]), and who may reach an inbound
//! port and how fast ([`inbound`]). Each converts from `linkerd2-proxy-api` messages and rejects
//! an invalid message with a reason, as Linkerd's proxy does.

pub mod inbound;
pub mod outbound;
