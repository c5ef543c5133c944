//! Protocol detection over a client's first bytes: every prefix gets an answer (done or more
//! needed), giving up always decides, and a decision never changes as more bytes arrive.
#![no_main]
use knit_core::detect::{detect, give_up, Detection};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for end in 0..=data.len().min(512) {
        match detect(&data[..end]) {
            Detection::Done(p) => {
                if let Some(first) = &decided {
                    assert_eq!(first, &p, "detection changed its mind at {end} bytes");
                }
                decided.get_or_insert(p);
            }
            Detection::NeedMore => assert!(decided.is_none(), "more bytes were asked for after a decision"),
        }
        let _ = give_up(&data[..end], end == data.len());
    }
});
