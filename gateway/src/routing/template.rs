//! Path templates: `/orders/{id}/lines`, `/files/{rest*}`.
//!
//! A template is a list of segments: a literal, a parameter (`{name}`, exactly
//! one non-empty segment) or a tail (`{name*}`, the rest of the path, last
//! segment only). Matching is allocation-free. Precedence between templates
//! that match the same path is decided by [`PathTemplate::specificity`]: at the
//! first position where two templates differ in kind, literal beats parameter
//! beats tail — so `/orders/export` wins over `/orders/{id}`, which wins over
//! `/orders/{rest*}`.

use std::fmt;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Must equal this text exactly.
    Literal(String),
    /// Any one non-empty segment, captured under this name.
    Param(String),
    /// Zero or more remaining segments.
    Tail(String),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
}

/// Why a template is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Templates start with `/`.
    #[error("path template must start with `/`")]
    NoLeadingSlash,
    /// `{` without `}` or similar.
    #[error("segment `{0}` is not a literal, `{{name}}` or `{{name*}}`")]
    BadSegment(String),
    /// `{rest*}` not last.
    #[error("`{{{0}*}}` must be the last segment")]
    TailNotLast(String),
    /// The same parameter name twice.
    #[error("parameter `{0}` appears twice")]
    DuplicateParam(String),
    /// `..`, `.`, or an empty segment in the middle.
    #[error("segment `{0}` is not allowed in a template")]
    ForbiddenSegment(String),
}

impl PathTemplate {
    /// Parse a template such as `/orders/{id}`.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let rest = source
            .strip_prefix('/')
            .ok_or(TemplateError::NoLeadingSlash)?;
        let mut segments = Vec::new();
        if !rest.is_empty() {
            let parts: Vec<&str> = rest.split('/').collect();
            let last = parts.len() - 1;
            for (i, part) in parts.iter().enumerate() {
                segments.push(parse_segment(part, i == last)?);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for s in &segments {
            if let Segment::Param(n) | Segment::Tail(n) = s {
                if !seen.insert(n.as_str()) {
                    return Err(TemplateError::DuplicateParam(n.clone()));
                }
            }
        }
        Ok(Self {
            source: source.to_string(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Precedence key: smaller sorts first and wins.
    pub fn specificity(&self) -> Vec<u8> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 0,
                Segment::Param(_) => 1,
                Segment::Tail(_) => 2,
            })
            .collect()
    }

    /// The shape of the template with parameter names erased: two templates
    /// with the same shape match exactly the same paths.
    pub fn shape(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(_) => out.push_str("{}"),
                Segment::Tail(_) => out.push_str("{*}"),
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    /// Does `path` (no query string, starting with `/`) match? A trailing
    /// slash is not a segment of its own: `/a/` matches `/a`.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        // Byte slicing instead of `split('/')`: a route table tries several
        // templates per request, and the iterator's searcher cost more than
        // the comparisons. `more`: a segment (possibly empty) is left.
        let mut rest = rest.as_bytes();
        let mut more = !rest.is_empty();
        for seg in &self.segments {
            let len = match seg {
                Segment::Tail(_) => return true,
                Segment::Literal(l) => {
                    let l = l.as_bytes();
                    let whole = rest.get(l.len()).is_none_or(|&b| b == b'/');
                    if !more || !rest.starts_with(l) || !whole {
                        return false;
                    }
                    l.len()
                }
                Segment::Param(_) => {
                    let len = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
                    if !more || len == 0 {
                        return false;
                    }
                    len
                }
            };
            // Past the segment and its '/', if one follows.
            (rest, more) = match rest.get(len + 1..) {
                Some(after) => (after, true),
                None => (&b""[..], false),
            };
        }
        // Nothing left, or only a trailing slash (`/admin/` is `/admin`).
        !more || rest.is_empty()
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn parse_segment(part: &str, is_last: bool) -> Result<Segment, TemplateError> {
    if let Some(inner) = part.strip_prefix('{') {
        let inner = inner
            .strip_suffix('}')
            .ok_or_else(|| TemplateError::BadSegment(part.to_string()))?;
        let (name, tail) = match inner.strip_suffix('*') {
            Some(n) => (n, true),
            None => (inner, false),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(TemplateError::BadSegment(part.to_string()));
        }
        if tail {
            if !is_last {
                return Err(TemplateError::TailNotLast(name.to_string()));
            }
            return Ok(Segment::Tail(name.to_string()));
        }
        return Ok(Segment::Param(name.to_string()));
    }
    if part.contains(['{', '}']) {
        return Err(TemplateError::BadSegment(part.to_string()));
    }
    if part == "." || part == ".." || (part.is_empty() && !is_last) {
        return Err(TemplateError::ForbiddenSegment(part.to_string()));
    }
    Ok(Segment::Literal(part.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap()
    }

    #[test]
    fn literal_param_and_tail_match() {
        assert!(t("/orders").matches("/orders"));
        assert!(!t("/orders").matches("/orders/1"));
        assert!(t("/orders/{id}").matches("/orders/42"));
        assert!(!t("/orders/{id}").matches("/orders/"));
        assert!(!t("/orders/{id}").matches("/orders"));
        assert!(t("/files/{rest*}").matches("/files"));
        assert!(t("/files/{rest*}").matches("/files/a/b/c"));
        assert!(t("/").matches("/"));
        assert!(!t("/").matches("/x"));
        assert!(t("/orders/").matches("/orders/"));
    }

    #[test]
    fn bad_templates_are_rejected() {
        assert_eq!(
            PathTemplate::parse("orders"),
            Err(TemplateError::NoLeadingSlash)
        );
        assert!(matches!(
            PathTemplate::parse("/a/{b"),
            Err(TemplateError::BadSegment(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/a/x{b}"),
            Err(TemplateError::BadSegment(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/{r*}/x"),
            Err(TemplateError::TailNotLast(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/{a}/{a}"),
            Err(TemplateError::DuplicateParam(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/a/../b"),
            Err(TemplateError::ForbiddenSegment(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/a//b"),
            Err(TemplateError::ForbiddenSegment(_))
        ));
    }

    #[test]
    fn shapes_erase_names() {
        assert_eq!(t("/orders/{id}").shape(), t("/orders/{orderId}").shape());
        assert_ne!(t("/orders/{id}").shape(), t("/orders/{id*}").shape());
    }

    /// The reference reading of `matches`.
    fn by_splitting(t: &PathTemplate, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = (!rest.is_empty()).then(|| rest.split('/'));
        for seg in t.segments() {
            match seg {
                Segment::Tail(_) => return true,
                Segment::Literal(l) => match parts.as_mut().and_then(Iterator::next) {
                    Some(p) if p == l => {}
                    _ => return false,
                },
                Segment::Param(_) => match parts.as_mut().and_then(Iterator::next) {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
            }
        }
        // A trailing slash leaves one empty part, which is no segment.
        parts.is_none_or(|mut p| matches!(p.next(), None | Some("")) && p.next().is_none())
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z]{1,3}",
            2 => "\\{[a-z]{1,3}\\}",
        ]
    }

    proptest! {
        /// A template built from literals and params matches the path obtained
        /// by substituting any non-empty values for its params.
        #[test]
        fn template_matches_its_instances(segs in proptest::collection::vec(segment(), 0..6),
                                          values in proptest::collection::vec("[A-Za-z0-9_.~-]{1,8}", 6)) {
            let mut names = std::collections::HashSet::new();
            let segs: Vec<String> = segs.into_iter().enumerate().map(|(i, s)| {
                if s.starts_with('{') { format!("{{p{i}}}") } else { s }
            }).filter(|s| names.insert(s.clone())).collect();
            let tpl = format!("/{}", segs.join("/"));
            let tpl = PathTemplate::parse(&tpl).unwrap();
            let path: Vec<String> = tpl.segments().iter().enumerate().map(|(i, s)| match s {
                Segment::Literal(l) => l.clone(),
                _ => values[i % values.len()].clone(),
            }).collect();
            let path = format!("/{}", path.join("/"));
            prop_assert!(tpl.matches(&path), "{} should match {}", tpl, path);
            // One more segment never matches a template without a tail.
            let longer = format!("{}/extra", path.trim_end_matches('/'));
            if !tpl.segments().is_empty() {
                prop_assert!(!tpl.matches(&longer));
            }
        }

        /// The byte matcher agrees with the plain reading of a template:
        /// split the path at '/', compare segment by segment.
        #[test]
        fn matching_agrees_with_splitting(tpl in "(/([ab]{0,2}|\\{[a-z]\\}))*(/\\{t\\*\\})?", path in "[/ab]{0,12}") {
            if let Ok(t) = PathTemplate::parse(if tpl.is_empty() { "/" } else { &tpl }) {
                prop_assert_eq!(t.matches(&path), by_splitting(&t, &path), "{} on {:?}", t, path);
            }
        }

        /// Matching never panics on arbitrary input.
        #[test]
        fn matching_is_total(tpl in "(/([a-z]{1,2}|\\{[a-z]\\}))*(/\\{t\\*\\})?", path in "\\PC{0,40}") {
            if let Ok(t) = PathTemplate::parse(if tpl.is_empty() { "/" } else { &tpl }) {
                let _ = t.matches(&path);
            }
        }
    }
}
