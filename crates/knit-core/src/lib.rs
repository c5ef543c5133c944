//! Knit's shared core: the domain types and pure decisions that the proxy, the control plane and
//! the CLI agree on. It has no async runtime, no Kubernetes client and no gRPC stack, so every
//! function here is a plain function over plain data and is tested as such.
//!
//! - [`parse`]: the value formats of Knit's configuration (durations, port sets, lists).
//! - [`detect`]: protocol detection over the first bytes a client sent.
//! - [`transport_header`]: Linkerd's `transport.l5d.io/v1` connection header.
//! - [`destination`]: authorities, endpoints and the local-mode destination table.

pub mod destination;
pub mod detect;
pub mod parse;
pub mod per_source;
pub mod transport_header;
