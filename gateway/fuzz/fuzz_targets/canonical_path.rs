//! Any text as a request path: a canonical path is a fixed point (made
//! canonical again, it is itself, borrowed), starts with `/`, and holds
//! nothing an app server could resolve further: no empty, `.` or `..`
//! segment, no `;`, no backslash, no escape of an unreserved character,
//! a slash or a backslash, and no `%25` that decodes to a further escape.
#![no_main]

use std::borrow::Cow;

use gatehouse::routing::canonical_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(canonical) = canonical_path(path) else {
        return;
    };
    assert!(canonical.starts_with('/'), "{canonical:?}");
    assert!(
        matches!(canonical_path(&canonical), Ok(Cow::Borrowed(again)) if again == canonical),
        "not a fixed point: {path:?} -> {canonical:?}"
    );
    let inner = canonical.strip_suffix('/').unwrap_or(&canonical);
    for segment in inner.split('/').skip(1) {
        assert!(
            !segment.is_empty() && segment != "." && segment != "..",
            "{path:?} -> {canonical:?}"
        );
    }
    assert!(!canonical.contains([';', '\\']), "{canonical:?}");
    let bytes = canonical.as_bytes();
    for (at, _) in canonical.match_indices('%') {
        let hex = bytes.get(at + 1..at + 3).expect("a complete escape");
        let byte = u8::from_str_radix(std::str::from_utf8(hex).expect("hex"), 16).expect("hex");
        let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
        // `%25` stays only where decoding it makes no further escape.
        let double = byte == b'%'
            && bytes
                .get(at + 3..at + 5)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        assert!(
            !unreserved && !b"/\\".contains(&byte) && !double,
            "{path:?} -> {canonical:?} keeps %{}",
            std::str::from_utf8(hex).unwrap_or("?")
        );
    }
});
