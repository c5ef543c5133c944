//! Path normalization before routing and authorization: normalizing twice changes nothing, and
//! a normalized path has no empty or dot segment left to walk around a rule with.
#![no_main]
use knit_proxy::http::normalize::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if !path.is_ascii() || path == "*" {
        return;
    }
    let once = normalize_path(path).into_owned();
    assert_eq!(normalize_path(&once), once.as_str(), "{path:?} -> {once:?}");
    assert!(once.starts_with('/'));
    // The segments between the leading and an optional trailing slash ("/" has none).
    let inner = once.strip_prefix('/').unwrap_or(&once);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    assert!(inner.is_empty() || !inner.split('/').any(|s| s.is_empty() || s == "." || s == ".."), "{path:?} -> {once:?}");
});
