//! Parameters: locating them in a request, turning their text into typed
//! JSON values (by the schema's `type`, OpenAPI's `simple`/`form` styles),
//! and validating them.

use std::borrow::Cow;
use std::sync::Arc;

use jsonschema::Validator;
use serde_json::Value;

use super::violation::{validate_json, Violation, ViolationLocation};

/// Where a parameter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamIn {
    /// Path segment.
    Path,
    /// Query string.
    Query,
    /// Header.
    Header,
}

/// The JSON type a parameter's text is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    /// Text as is.
    String,
    /// Integer (falls back to text, so the validator reports the type error).
    Integer,
    /// Number.
    Number,
    /// `true` / `false`.
    Boolean,
}

/// How a parameter's text maps to a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One value.
    Scalar(Scalar),
    /// A list: repeated keys (`explode`, query only) or comma-separated.
    Array {
        /// Item type.
        items: Scalar,
        /// Repeated keys rather than commas.
        explode: bool,
    },
}

/// One compiled parameter.
#[derive(Debug)]
pub struct ParamCheck {
    /// Name (headers: lowercase).
    pub name: String,
    /// Location.
    pub location: ParamIn,
    /// Must be present.
    pub required: bool,
    /// Text → JSON mapping.
    pub shape: Shape,
    /// Schema of the value.
    pub validator: Option<Arc<Validator>>,
    /// Index of the path segment below the app prefix, for path parameters.
    pub segment: Option<usize>,
}

/// A request's header fields as the parameter checks read them (every
/// request view of the pipeline is one).
pub trait HeaderFields {
    /// Every value of header `name` (given in lowercase), in order.
    fn each_header(&self, name: &str, f: &mut dyn FnMut(&[u8]));
}

/// The parts of a request that parameters are read from.
pub struct RequestParts<'a> {
    /// Path below the app prefix.
    pub path: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a dyn HeaderFields,
}

impl std::fmt::Debug for RequestParts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestParts")
            .field("path", &self.path)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl ParamCheck {
    /// Check this parameter in `req`.
    pub fn check(&self, req: &RequestParts<'_>, out: &mut Vec<Violation>, max: usize) {
        let loc = match self.location {
            ParamIn::Path => ViolationLocation::Path,
            ParamIn::Query => ViolationLocation::Query,
            ParamIn::Header => ViolationLocation::Header,
        };
        let texts: Vec<Cow<'_, str>> = match self.location {
            ParamIn::Path => self
                .segment
                .and_then(|i| req.path.trim_start_matches('/').split('/').nth(i))
                .map(|s| vec![percent_decode(s, false)])
                .unwrap_or_default(),
            ParamIn::Query => query_values(req.query, &self.name),
            ParamIn::Header => {
                let mut texts = Vec::new();
                req.headers.each_header(&self.name, &mut |v| {
                    texts.push(Cow::Owned(String::from_utf8_lossy(v).into_owned()));
                });
                texts
            }
        };
        if texts.is_empty() {
            if self.required {
                out.push(Violation {
                    location: loc,
                    name: Some(self.name.clone()),
                    pointer: String::new(),
                    keyword: "required".into(),
                    message: format!(
                        "required {} parameter `{}` is missing",
                        loc_name(self.location),
                        self.name
                    ),
                });
            }
            return;
        }
        if matches!(self.shape, Shape::Scalar(_)) && texts.len() > 1 {
            // One value is judged and the app may read another: neither.
            out.push(Violation {
                location: loc,
                name: Some(self.name.clone()),
                pointer: String::new(),
                keyword: "repeated".into(),
                message: format!(
                    "{} parameter `{}` takes one value and was given {}",
                    loc_name(self.location),
                    self.name,
                    texts.len()
                ),
            });
            return;
        }
        let value = match self.shape {
            Shape::Scalar(s) => typed(&texts[0], s),
            Shape::Array { items, explode } => {
                let parts: Vec<&str> = if explode && self.location == ParamIn::Query {
                    texts.iter().map(|t| t.as_ref()).collect()
                } else {
                    texts.iter().flat_map(|t| t.split(',')).collect()
                };
                Value::Array(parts.into_iter().map(|p| typed(p, items)).collect())
            }
        };
        if let Some(v) = &self.validator {
            validate_json(v, &value, loc, Some(&self.name), out, max);
        }
    }
}

fn loc_name(l: ParamIn) -> &'static str {
    match l {
        ParamIn::Path => "path",
        ParamIn::Query => "query",
        ParamIn::Header => "header",
    }
}

fn typed(text: &str, s: Scalar) -> Value {
    let t = text.trim();
    match s {
        Scalar::String => Value::String(text.to_string()),
        Scalar::Integer => t
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.to_string())),
        Scalar::Number => t
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_string())),
        Scalar::Boolean => match t {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
    }
}

/// All values of `name` in a query string, percent-decoded.
pub fn query_values<'a>(query: Option<&'a str>, name: &str) -> Vec<Cow<'a, str>> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true) == name).then(|| percent_decode(v, true))
        })
        .collect()
}

/// Decode `%XX` escapes (and `+` as space in query strings). Invalid escapes stay as written.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Cow<'_, str> {
    if !(s.contains('%') || plus_is_space && s.contains('+')) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b", false), "a b");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz", false), "%zz");
        assert_eq!(percent_decode("%e2%82%ac", false), "€");
    }

    #[test]
    fn query_values_are_found_and_decoded() {
        let q = Some("status=open&tag=a&tag=b%20c&empty=&x");
        assert_eq!(query_values(q, "status"), vec!["open"]);
        assert_eq!(query_values(q, "tag"), vec!["a", "b c"]);
        assert_eq!(query_values(q, "empty"), vec![""]);
        assert_eq!(query_values(q, "x"), vec![""]);
        assert!(query_values(q, "missing").is_empty());
    }

    #[test]
    fn text_is_typed_by_schema_type() {
        assert_eq!(typed("42", Scalar::Integer), Value::from(42));
        assert_eq!(typed("4.5", Scalar::Integer), Value::String("4.5".into()));
        assert_eq!(typed("4.5", Scalar::Number), serde_json::json!(4.5));
        assert_eq!(typed("true", Scalar::Boolean), Value::Bool(true));
        assert_eq!(typed("yes", Scalar::Boolean), Value::String("yes".into()));
    }
}
