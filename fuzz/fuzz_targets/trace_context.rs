//! Trace context from the application or a peer (`traceparent`, `grpc-trace-bin`, B3) and the
//! trace resource attributes: parsing never panics, and a context that parses is written back
//! for the next hop in its own format, which parses to the same trace with a new span.
#![no_main]
use http::{HeaderMap, HeaderValue};
use knit_proxy::trace::{self, context::Context};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = ["traceparent", "grpc-trace-bin", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"];

fuzz_target!(|data: &[u8]| {
    // Up to five header values, separated by 0xff, in the order of NAMES.
    let mut headers = HeaderMap::new();
    for (name, value) in NAMES.iter().zip(data.split(|b| *b == 0xff)) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(*name, v);
        }
    }
    if let Some(c) = Context::extract(&headers) {
        let child = c.child();
        assert_ne!(child.span_id, [0; 8]);
        let mut next = headers.clone();
        child.inject(&mut next);
        let read = Context::extract(&next).expect("a written context parses");
        assert_eq!((read.format, read.trace_id, read.span_id, read.sampled()), (c.format, c.trace_id, child.span_id, c.sampled()));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = trace::parse_otel_resource_attributes(s);
        let _ = trace::parse_lines(s);
    }
});
