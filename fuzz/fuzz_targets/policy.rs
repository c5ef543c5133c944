//! The policy translation from the control plane's messages (an attacker that owns the network
//! between proxy and control plane, or a broken control plane): any bytes that decode as an
//! `OutboundPolicy` or an inbound `Server` are either converted or refused with a reason,
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use linkerd2_proxy_api::{inbound, outbound};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = outbound::OutboundPolicy::decode(data) {
        if let Ok(policy) = knit_proxy::policy::outbound::OutboundPolicy::try_from(&p) {
            // A converted policy answers its HTTP versions without panicking.
            for v in [http::Version::HTTP_11, http::Version::HTTP_2] {
                let _ = policy.protocol.http(v);
            }
        }
    }
    if let Ok(s) = inbound::Server::decode(data) {
        let _ = knit_proxy::policy::inbound::ServerPolicy::try_from(s);
    }
});
