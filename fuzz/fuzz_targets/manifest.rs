//! The manifest parser (local mode reads whatever is in the directory): any text is either
//! resources or errors naming the document, never a panic, and never an unbounded expansion
//! (YAML aliases).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (resources, errors) = knit_control::resources::parse("fuzz.yaml", text);
    for e in &errors {
        assert!(e.starts_with("fuzz.yaml: "), "an error names its file: {e}");
    }
    let _ = resources.len();
});
