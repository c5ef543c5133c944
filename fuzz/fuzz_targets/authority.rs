//! Authorities (`Host`, `:authority`, port forwards, the destination table): parsing never
//! panics, and what parses prints back to a string that parses to the same value.
#![no_main]
use knit_core::destination::{parse_port_forwards, Authority, DestinationTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(a) = Authority::parse(s, Some(80)) {
        assert_eq!(Authority::parse(&a.to_string(), None).as_ref(), Ok(&a), "{s:?} -> {a}");
    }
    let _ = s.parse::<DestinationTable>();
    let _ = parse_port_forwards(s);
});
