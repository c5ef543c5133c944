//! Trace-context propagation, as Linkerd's proxy reads and writes it (LINKERD-WIRE.md §14):
//! W3C `traceparent` (version `00`; `tracestate` passed through untouched), then gRPC's
//! `grpc-trace-bin` (OpenCensus binary, base64), then B3 multi-header (`x-b3-traceid`,
//! `x-b3-spanid`, `x-b3-sampled`); the first that parses wins, so W3C wins over B3.
//!
//! Every value comes from the application or a peer: anything malformed is ignored, as if
//! absent (the request is neither refused nor traced).

use base64::Engine;
use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: &str = "traceparent";
pub const GRPC_TRACE_BIN: &str = "grpc-trace-bin";
pub const B3_TRACE_ID: &str = "x-b3-traceid";
pub const B3_SPAN_ID: &str = "x-b3-spanid";
pub const B3_SAMPLED: &str = "x-b3-sampled";

/// The header format a context arrived in, and is written back in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    W3c,
    GrpcTraceBin,
    B3,
}

/// A request's position in a trace: its trace, the span that sent it, and the trace flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub format: Format,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// W3C trace flags: bit 0 is "sampled".
    pub flags: u8,
}

impl Context {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The context a request carries, if any parses.
    pub fn extract(headers: &HeaderMap) -> Option<Self> {
        let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
        get(TRACEPARENT)
            .and_then(w3c)
            .or_else(|| get(GRPC_TRACE_BIN).and_then(grpc_trace_bin))
            .or_else(|| b3(get(B3_TRACE_ID)?, get(B3_SPAN_ID)?, get(B3_SAMPLED)))
    }

    /// A new span of the same trace, with a fresh id.
    pub fn child(&self) -> Self {
        Self { span_id: new_span_id(), ..*self }
    }

    /// A new, sampled trace (written as W3C).
    pub fn root() -> Self {
        let mut trace_id = [0; 16];
        while trace_id == [0; 16] {
            trace_id = fastrand::u128(..).to_be_bytes();
        }
        Self { format: Format::W3c, trace_id, span_id: new_span_id(), flags: 1 }
    }

    /// Writes this context into the headers it came in (B3: only the span id changes).
    pub fn inject(&self, headers: &mut HeaderMap) {
        let value = match self.format {
            Format::W3c => format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), self.flags),
            Format::GrpcTraceBin => {
                let mut bin = [0u8; 29];
                bin[2..18].copy_from_slice(&self.trace_id);
                bin[18] = 1;
                bin[19..27].copy_from_slice(&self.span_id);
                bin[27] = 2;
                bin[28] = self.flags & 1;
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(bin)
            }
            Format::B3 => hex(&self.span_id),
        };
        let name = match self.format {
            Format::W3c => TRACEPARENT,
            Format::GrpcTraceBin => GRPC_TRACE_BIN,
            Format::B3 => B3_SPAN_ID,
        };
        // Hex and base64 are always valid header values.
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Lower-case hex of exactly `N` bytes (W3C forbids upper case; B3 asks for lower case).
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// `00-<trace id: 32 hex>-<span id: 16 hex>-<flags: 2 hex>`; all-zero ids are invalid.
fn w3c(v: &str) -> Option<Context> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    let (trace_id, span_id) = (unhex::<16>(trace)?, unhex::<8>(span)?);
    let [flags] = unhex::<1>(flags)?;
    valid(trace_id, span_id).then_some(Context { format: Format::W3c, trace_id, span_id, flags })
}

/// OpenCensus binary: version 0, then field 0 (trace id, 16 bytes), field 1 (span id, 8 bytes)
/// and optionally field 2 (trace options, 1 byte), in that order.
fn grpc_trace_bin(v: &str) -> Option<Context> {
    let v = v.trim().trim_end_matches('=');
    let bin = base64::engine::general_purpose::STANDARD_NO_PAD.decode(v).ok()?;
    let (&[0, 0], rest) = bin.split_first_chunk::<2>()? else { return None };
    let (trace_id, rest) = rest.split_first_chunk::<16>()?;
    let (&[1], rest) = rest.split_first_chunk::<1>()? else { return None };
    let (span_id, rest) = rest.split_first_chunk::<8>()?;
    let flags = match rest {
        [2, options, ..] => options & 1,
        _ => 0,
    };
    valid(*trace_id, *span_id).then_some(Context { format: Format::GrpcTraceBin, trace_id: *trace_id, span_id: *span_id, flags })
}

/// A 64- or 128-bit trace id, a 64-bit span id; sampled only when `x-b3-sampled` is `1`.
fn b3(trace: &str, span: &str, sampled: Option<&str>) -> Option<Context> {
    let trace = trace.trim();
    let trace_id = match trace.len() {
        16 => {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&unhex::<8>(trace)?);
            id
        }
        _ => unhex::<16>(trace)?,
    };
    let span_id = unhex::<8>(span.trim())?;
    let flags = u8::from(sampled.map(str::trim) == Some("1"));
    valid(trace_id, span_id).then_some(Context { format: Format::B3, trace_id, span_id, flags })
}

fn valid(trace_id: [u8; 16], span_id: [u8; 8]) -> bool {
    trace_id != [0; 16] && span_id != [0; 8]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_str(v).unwrap())).collect()
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn w3c_is_read_and_rewritten_with_a_new_span() {
        let mut h = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01")), ("tracestate", "congo=t61rcWkgMzE")]);
        let c = Context::extract(&h).unwrap();
        assert_eq!((c.format, hex(&c.trace_id), hex(&c.span_id), c.sampled()), (Format::W3c, TRACE.into(), SPAN.into(), true));
        let child = c.child();
        assert_ne!(child.span_id, c.span_id);
        child.inject(&mut h);
        assert_eq!(h["traceparent"], format!("00-{TRACE}-{}-01", hex(&child.span_id)));
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE", "tracestate is passed through");
        assert!(!Context::extract(&headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))])).unwrap().sampled());
    }

    #[test]
    fn malformed_w3c_is_ignored() {
        for bad in [
            format!("01-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            "".into(),
            "--------".into(),
        ] {
            assert_eq!(Context::extract(&headers(&[("traceparent", &bad)])), None, "{bad}");
        }
    }

    #[test]
    fn w3c_wins_over_b3() {
        let h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-00")),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ]);
        assert_eq!(Context::extract(&h).unwrap().format, Format::W3c);
    }

    #[test]
    fn b3_rewrites_only_the_span_id() {
        let mut h = headers(&[("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"), ("x-b3-spanid", "e457b5a2e4d86bd1"), ("x-b3-sampled", "1")]);
        let c = Context::extract(&h).unwrap();
        assert_eq!((c.format, c.sampled()), (Format::B3, true));
        let child = c.child();
        child.inject(&mut h);
        assert_eq!(h["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(h["x-b3-spanid"], hex(&child.span_id));
        assert_eq!(h["x-b3-sampled"], "1");
        // A 64-bit trace id is the low half of the 128-bit one.
        let short = Context::extract(&headers(&[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", SPAN)])).unwrap();
        assert_eq!(hex(&short.trace_id), "0000000000000000a3ce929d0e0e4736");
        assert!(!short.sampled(), "absent x-b3-sampled is not sampled");
        assert!(!Context::extract(&headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-sampled", "true")])).unwrap().sampled());
        assert_eq!(Context::extract(&headers(&[("x-b3-traceid", TRACE)])), None, "no span id");
    }

    #[test]
    fn grpc_trace_bin_round_trips() {
        let c = Context { format: Format::GrpcTraceBin, trace_id: unhex::<16>(TRACE).unwrap(), span_id: unhex::<8>(SPAN).unwrap(), flags: 1 };
        let mut h = HeaderMap::new();
        c.inject(&mut h);
        assert_eq!(Context::extract(&h), Some(c));
        // Padded base64, as some senders write it, and no options field (not sampled).
        let mut bin = vec![0u8, 0];
        bin.extend(c.trace_id);
        bin.push(1);
        bin.extend(c.span_id);
        let padded = base64::engine::general_purpose::STANDARD.encode(&bin);
        let read = Context::extract(&headers(&[("grpc-trace-bin", &padded)])).unwrap();
        assert_eq!((read.trace_id, read.span_id, read.sampled()), (c.trace_id, c.span_id, false));
        for bad in ["", "AAAA", "not base64!", &base64::engine::general_purpose::STANDARD.encode([1u8; 29])] {
            assert_eq!(Context::extract(&headers(&[("grpc-trace-bin", bad)])), None, "{bad}");
        }
    }

    #[test]
    fn a_root_is_sampled_w3c() {
        let r = Context::root();
        assert!(r.sampled() && r.format == Format::W3c && r.trace_id != [0; 16] && r.span_id != [0; 8]);
        let mut h = HeaderMap::new();
        r.inject(&mut h);
        assert_eq!(Context::extract(&h), Some(r));
    }
}
