//! Format checks registered on every contract validator.
//!
//! `email`: `jsonschema`'s own check parses with the `email_address` crate
//! (display names, quoted local parts, address literals), and it was the
//! most expensive keyword of a typical order body. Most addresses in real
//! traffic are a plain dot-atom at an ASCII host name; [`email`] accepts
//! those with one byte scan and hands everything else to `jsonschema`'s
//! check, so every verdict is `jsonschema`'s. A property test checks that
//! the scan accepts only what `jsonschema` accepts.

use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::{json, Value};

/// `jsonschema`'s built-in `email` format, for what the scan leaves.
static BUILTIN_EMAIL: LazyLock<Option<Validator>> = LazyLock::new(|| {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&json!({ "format": "email" }))
        .ok()
});

/// The `email` format: a plain address by scan, anything else as
/// `jsonschema` judges it.
pub fn email(text: &str) -> bool {
    plain_email(text) || builtin_email(text)
}

fn builtin_email(text: &str) -> bool {
    BUILTIN_EMAIL
        .as_ref()
        .is_some_and(|v| v.is_valid(&Value::String(text.to_owned())))
}

/// A byte of [`plain_email`]'s alphabet: a letter or digit.
const ALNUM: u8 = 1;
/// A byte of [`plain_email`]'s alphabet: `.`, `_`, `+` or `-`.
const PUNCT: u8 = 2;

/// [`ALNUM`] or [`PUNCT`] by byte (0: neither).
static CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        table[i] = if c.is_ascii_alphanumeric() {
            ALNUM
        } else if matches!(c, b'.' | b'_' | b'+' | b'-') {
            PUNCT
        } else {
            0
        };
        i += 1;
    }
    table
};

/// `local@host`: a dot-atom local part of letters, digits and `._+-`
/// (≤ 64 bytes, no leading, trailing or double dot) at a host name of at
/// least two labels of letters, digits and inner single hyphens (≤ 63
/// bytes each), ≤ 254 bytes in all. One pass over the bytes.
fn plain_email(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() > 254 {
        return false;
    }
    // The local part; a dot "before" the first byte refuses a leading dot.
    let mut prev = b'.';
    let mut at = None;
    for (i, &c) in bytes.iter().enumerate() {
        if CLASS[usize::from(c)] == ALNUM {
            prev = c;
            continue;
        }
        if c == b'@' {
            at = Some(i);
            break;
        }
        if CLASS[usize::from(c)] == 0 || (c == b'.' && prev == b'.') {
            return false;
        }
        prev = c;
    }
    let Some(at) = at else {
        return false;
    };
    if at == 0 || at > 64 || prev == b'.' {
        return false;
    }
    // The host: labels end at a dot or at the end.
    let (mut labels, mut start, mut prev) = (0u32, at + 1, b'.');
    for (i, &c) in bytes.iter().enumerate().skip(at + 1) {
        if CLASS[usize::from(c)] == ALNUM {
            prev = c;
            continue;
        }
        let label_start = i == start;
        match c {
            b'.' if label_start || prev == b'-' || i - start > 63 => return false,
            b'.' => {
                labels += 1;
                start = i + 1;
            }
            b'-' if label_start || prev == b'-' => return false,
            b'-' => {}
            _ => return false,
        }
        prev = c;
    }
    let len = bytes.len() - start;
    (1..=63).contains(&len) && prev != b'-' && labels >= 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_and_unusual_addresses() {
        for ok in [
            "purchasing@customer.example",
            "first.last+tag@mail.corp.example",
            "a@b.co",
            "x_y-z@sub-domain.example",
        ] {
            assert!(plain_email(ok), "{ok}");
            assert!(email(ok) && builtin_email(ok), "{ok}");
        }
        // Not plain: judged by jsonschema (valid or not, as it says).
        for other in [
            "\"quoted local\"@example.com",
            "user@[127.0.0.1]",
            "user@localhost",
            "not an email",
            "a..b@example.com",
            ".a@example.com",
            "a@-example.com",
            "a@example..com",
            "a@xn--bcher-kva.example",
            "",
            "@example.com",
            "a@",
        ] {
            assert!(!plain_email(other), "{other}");
            assert_eq!(email(other), builtin_email(other), "{other}");
        }
        assert!(!email("not an email"));
        assert!(email("user@[127.0.0.1]"), "address literals stay valid");
    }

    /// The rules of [`plain_email`] written out one at a time: the
    /// one-pass scan must agree with it on every string.
    fn plain_by_rules(text: &str) -> bool {
        let bytes = text.as_bytes();
        let Some(at) = bytes.iter().position(|&c| c == b'@') else {
            return false;
        };
        let (local, domain) = (&bytes[..at], &bytes[at + 1..]);
        if local.is_empty() || local.len() > 64 || bytes.len() > 254 {
            return false;
        }
        if local.first() == Some(&b'.')
            || local.last() == Some(&b'.')
            || local.windows(2).any(|w| w == b"..")
            || !local
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-'))
        {
            return false;
        }
        let labels: Vec<&[u8]> = domain.split(|&c| c == b'.').collect();
        labels.len() >= 2
            && labels.iter().all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.first() != Some(&b'-')
                    && label.last() != Some(&b'-')
                    && !label.windows(2).any(|w| w == b"--")
                    && label
                        .iter()
                        .all(|&c| c.is_ascii_alphanumeric() || c == b'-')
            })
    }

    #[test]
    fn length_limits() {
        let label = "a".repeat(63);
        assert!(plain_email(&format!("{}@{label}.example", "l".repeat(64))));
        assert!(!plain_email(&format!("{}@x.example", "l".repeat(65))));
        assert!(!plain_email(&format!("a@{label}b.example")));
        let long = format!("a@{}", [label.as_str(); 4].join("."));
        assert_eq!(long.len(), 257);
        assert!(!plain_email(&long));
        assert!(plain_email(&long[..254]));
    }

    proptest! {
        /// The one-pass scan and the rules one at a time agree.
        #[test]
        fn the_scan_follows_the_rules(text in "[a-z0-9@.\\-_+ ]{0,24}") {
            prop_assert_eq!(plain_email(&text), plain_by_rules(&text), "{}", text);
        }

        /// The same on strings shaped like addresses.
        #[test]
        fn the_scan_follows_the_rules_near_addresses(
            text in "[a-z.+_-]{0,5}[a-z0-9]{0,2}@?[a-z0-9][a-z0-9.-]{0,10}[a-z0-9.-]?",
        ) {
            prop_assert_eq!(plain_email(&text), plain_by_rules(&text), "{}", text);
        }

        /// Everything the scan accepts, jsonschema accepts.
        #[test]
        fn the_scan_accepts_only_what_jsonschema_accepts(
            local in "[a-zA-Z0-9_+-]{1,24}(\\.[a-zA-Z0-9_+-]{1,12}){0,3}",
            labels in proptest::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,12}[a-zA-Z0-9])?", 2..5),
        ) {
            let address = format!("{local}@{}", labels.join("."));
            prop_assert_eq!(email(&address), builtin_email(&address), "{}", address);
        }

        /// On any string the verdict is jsonschema's.
        #[test]
        fn the_verdict_is_jsonschemas(text in "[a-zA-Z0-9@.\\-_+\" \\[\\]]{0,40}") {
            prop_assert_eq!(email(&text), builtin_email(&text));
        }
    }
}
