//! The Prometheus text a scrape returns (knit-control's viz store reads it from every proxy):
//! reading lines and their labels never panics, and a label value read whole is never longer
//! than the text it came from.
#![no_main]
use knit_control::viz::prom;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for line in prom::lines(text) {
        assert!(text.contains(line.name));
        let _ = line.labels(|name, value| {
            assert!(text.contains(name));
            assert!(value.len() <= text.len());
        });
    }
});
