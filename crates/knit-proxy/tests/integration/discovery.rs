//! Discovery end to end: knit-control in local mode serving a manifest directory, knit-proxies
//! certified by it and discovering routes, splits, endpoints and policy from it, and test
//! backends that say who answered. Manifests are edited while traffic flows.

mod control_tls;
mod egress;
mod fixture;
mod gateway;
mod multicluster;
mod opaque;
mod policy;
mod rotation;
mod routing;
mod tap;
mod tap_api;
mod trace;
