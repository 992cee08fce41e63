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

/// `local@host`: a dot-atom local part of letters, digits and `._+-`
/// (≤ 64 bytes, no leading, trailing or double dot) at a host name of at
/// least two labels of letters, digits and inner single hyphens (≤ 63
/// bytes each), ≤ 254 bytes in all.
fn plain_email(text: &str) -> bool {
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
    let mut labels = 0;
    for label in domain.split(|&c| c == b'.') {
        let plain = !label.is_empty()
            && label.len() <= 63
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-')
            && !label.windows(2).any(|w| w == b"--")
            && label
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'-');
        if !plain {
            return false;
        }
        labels += 1;
    }
    labels >= 2
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

    proptest! {
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
