//! Reading a JSON body as every app will: the I-JSON profile (RFC 7493).
//!
//! JSON parsers disagree on what `{"a":1,"a":"x"}` means (the first value,
//! the last, or an error); a body the gateway judged by one value and an
//! app acts on by another is a bypass. So a checked body must be I-JSON:
//! no member name twice in an object, numbers within the magnitude and
//! precision of an IEEE 754 double (an app reading `100.0000000000000001`
//! as a decimal sees a value over a maximum of 100 that the double the
//! gateway judged is not), and strings of Unicode scalar values (no
//! unpaired surrogate). `serde_json` already refuses out-of-range numbers
//! and unpaired surrogates; this module adds the rest, and is the one
//! reading every contract path falls back to.

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parse `body` as I-JSON: a repeated member name is an error, as are the
/// numbers and strings `serde_json` refuses, and trailing bytes.
pub fn parse(body: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    if let Some(number) = first_too_precise(body) {
        let shown: String = number.chars().take(40).collect();
        return Err(serde_json::Error::custom(format!(
            "the number {shown} is more precise than a double (RFC 7493 §2.2)"
        )));
    }
    Ok(value)
}

/// Whether number text `number` (JSON's grammar) says more than the double
/// it is read as: its decimal value is not the value of that double's
/// shortest form (`0.1` is the double 0.1; `0.99999999999999999` is read
/// as 1). Integers a 64-bit integer holds are exact; decimals of at most
/// 15 significant digits always are, unless they are beyond a double's
/// range (`1e-400` is read as 0).
pub fn too_precise(number: &str) -> bool {
    let unsigned = number.strip_prefix('-').unwrap_or(number);
    let integer = !unsigned.contains(['.', 'e', 'E']);
    if integer && (number.parse::<i64>().is_ok() || number.parse::<u64>().is_ok()) {
        return false;
    }
    let (Some(written), Ok(read)) = (decimal(number), number.parse::<f64>()) else {
        return true;
    };
    if !read.is_finite() || (read == 0.0 && !written.1.is_empty()) {
        return true; // beyond a double's range, or below it
    }
    written.1.len() > 15 && Some(written) != decimal(&format!("{read:e}"))
}

/// A decimal number's sign, significant digits and the power of ten of
/// the last of them (`-1.50e2` is `(true, "15", 1)`); zero has no digits.
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{whole}{fraction}");
    let kept = all.trim_end_matches('0');
    let power = exponent
        .checked_sub(i64::try_from(fraction.len()).ok()?)?
        .checked_add(i64::try_from(all.len() - kept.len()).ok()?)?;
    let digits = kept.trim_start_matches('0');
    if digits.is_empty() {
        return Some((negative, String::new(), 0));
    }
    Some((negative, digits.to_owned(), power))
}

/// The first number token of JSON text `body` (outside strings) that is
/// [`too_precise`].
fn first_too_precise(body: &[u8]) -> Option<&str> {
    numbers(body).find(|n| inexact_candidate(n) && too_precise(n))
}

/// Whether `body` holds a `\u` escape of a surrogate (`\uD800`–`\uDFFF`):
/// parsers that do not check their pairing must leave such a body to
/// [`parse`].
pub fn has_surrogate_escape(body: &[u8]) -> bool {
    let mut rest = body;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        match rest.get(at + 1) {
            Some(b'u') => {
                if let (Some(b'd' | b'D'), Some(b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')) =
                    (rest.get(at + 2), rest.get(at + 3))
                {
                    return true;
                }
                rest = &rest[at + 2..];
            }
            // `\\` and the other escapes: skip both bytes.
            Some(_) => rest = &rest[at + 2..],
            None => return false,
        }
    }
    false
}

/// Whether `body` may hold a number that says more than the double it is
/// read as ([`too_precise`]): a number (outside strings) with an exponent
/// or 16 digits or more. Parsers that read numbers as doubles only must
/// leave such a body to [`parse`].
pub fn may_hold_inexact_number(body: &[u8]) -> bool {
    numbers(body).any(inexact_candidate)
}

/// Whether number token `n` may say more than its double.
fn inexact_candidate(n: &str) -> bool {
    n.len() > 15 || n.contains(['e', 'E'])
}

/// Whether a parser that reads numbers only as doubles, and keeps no
/// text of them, could read `body`'s numbers otherwise than [`parse`]: a
/// number that may say more than its double ([`may_hold_inexact_number`])
/// or `-0` written as an integer ([`has_negative_zero`]). One pass.
pub fn numbers_may_read_otherwise(body: &[u8]) -> bool {
    numbers(body).any(|n| n == "-0" || inexact_candidate(n))
}

/// The number tokens of JSON text `body`, outside strings (as far as the
/// text is JSON).
fn numbers(body: &[u8]) -> impl Iterator<Item = &str> {
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < body.len() {
            match body[at] {
                b'"' => {
                    at += 1;
                    while at < body.len() && body[at] != b'"' {
                        at += if body[at] == b'\\' { 2 } else { 1 };
                    }
                    at += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let end = body[at..]
                        .iter()
                        .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                        .map_or(body.len(), |n| at + n);
                    let token = std::str::from_utf8(&body[at..end]).unwrap_or("");
                    at = end;
                    return Some(token);
                }
                _ => at += 1,
            }
        }
        None
    })
}

/// Whether `body` holds a control byte JSON allows nowhere (below 0x20,
/// but for the white space tab, LF and CR; a string must escape them).
pub fn has_control_byte(body: &[u8]) -> bool {
    body.iter()
        .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
}

/// Whether `body` holds the number `-0` written as an integer (not
/// `-0.0` or `-0e0`), which parsers read as the integer 0 or as the float
/// -0.0 (`serde_json`).
pub fn has_negative_zero(body: &[u8]) -> bool {
    numbers(body).any(|n| n == "-0")
}

/// A value read with member names checked.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                let shown: String = name.chars().take(64).collect();
                return Err(A::Error::custom(format!(
                    "the member name \"{shown}\" is repeated (RFC 7493: names are unique)"
                )));
            }
            let value = map.next_value_seed(Strict)?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repeated_member_names_are_refused_at_any_depth() {
        for body in [
            r#"{"a":1,"a":"x"}"#,
            r#"{"a":1,"a":1}"#,
            r#"{"x":{"b":[{"c":1,"c":2}]}}"#,
            r#"[{"a":1},{"b":1,"b":2}]"#,
            r#"{"a":1,"\u0061":2}"#,
        ] {
            let err = parse(body.as_bytes()).expect_err(body);
            assert!(err.to_string().contains("repeated"), "{body}: {err}");
        }
        assert_eq!(
            parse(br#"{"a":1,"b":{"a":2}}"#).expect("distinct names per object"),
            serde_json::json!({"a":1,"b":{"a":2}})
        );
    }

    #[test]
    fn numbers_out_of_range_and_lone_surrogates_are_refused() {
        for body in [
            "1e999",
            "-1e400",
            r#"{"a":1e309}"#,
            r#""\ud800""#,
            r#""\udc00x""#,
            r#""\ud800\u0041""#,
        ] {
            assert!(parse(body.as_bytes()).is_err(), "{body}");
        }
        assert!(parse(br#""\ud83d\ude00""#).is_ok(), "a surrogate pair");
        assert!(parse(b"1.7976931348623157e308").is_ok());
        assert!(parse(b"{} x").is_err(), "trailing bytes");
    }

    #[test]
    fn numbers_more_precise_than_a_double_are_refused() {
        for body in [
            "100.0000000000000001",
            "0.99999999999999999",
            "1.00000000000000001e2",
            "123456789012345678901234567890",
            r#"{"a":[1,-12345678.9012345678]}"#,
            "1e-400",
            "0.1000000000000000055511151231257827",
        ] {
            let err = parse(body.as_bytes()).expect_err(body);
            assert!(err.to_string().contains("precise"), "{body}: {err}");
        }
        for body in [
            "18446744073709551615",
            "-9223372036854775808",
            "100000000000000000000",
            "0.30000000000000004",
            "1.7976931348623157e308",
            "0.000000000000000000001",
            "5e-324",
            "-0.0",
            "1.5E+2",
            "3.14159265358979",
            r#""123456789012345678901234567890""#,
            r#"{"a\"1234567890123456789":1}"#,
        ] {
            assert!(parse(body.as_bytes()).is_ok(), "{body}");
        }
    }

    #[test]
    fn negative_zero_integers_are_found() {
        for body in ["-0", "[-0]", r#"{"a":-0}"#, "-0 "] {
            assert!(has_negative_zero(body.as_bytes()), "{body}");
        }
        for body in ["-0.0", "-0e1", "-1", "0", "-10", "[1,-0E0]"] {
            assert!(!has_negative_zero(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn surrogate_escapes_are_found() {
        assert!(has_surrogate_escape(br#""\ud800""#));
        assert!(has_surrogate_escape(br#""a\uDBFFb""#));
        assert!(
            !has_surrogate_escape(br#""\u0041\\ud800""#),
            "an escaped backslash"
        );
        assert!(!has_surrogate_escape(br#""\u00e9 \n""#));
        assert!(!has_surrogate_escape(br"\"));
    }

    proptest! {
        /// Where names are unique, the strict reading is `serde_json`'s.
        #[test]
        fn unique_names_read_as_serde_json(value in json_value()) {
            let text = serde_json::to_vec(&value).expect("serialise");
            prop_assert_eq!(parse(&text).expect("I-JSON"), value);
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            "[a-z\u{e9}\u{1f600}]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]{1,2}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
