//! Linkerd's transport header, as a peer (or anyone reaching the inbound port) sends it: the
//! decoder never panics, and what it decodes encodes back to the same bytes' meaning.
#![no_main]
use knit_core::transport_header::{decode, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Complete(header, used)) = decode(data) {
        assert!(used <= data.len());
        let again = header.encode();
        match decode(&again) {
            Ok(Decoded::Complete(h, n)) => {
                assert_eq!(h, header);
                assert_eq!(n, again.len());
            }
            other => panic!("a decoded header does not decode again: {other:?}"),
        }
    }
});
