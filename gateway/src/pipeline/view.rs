//! What the policy phases read of a request head, whichever HTTP/1.1 engine
//! parsed it: Pingora's `http` types, or the lean engine's head, which
//! borrows its read buffer instead of copying the head into them.

use http::Method;

/// A request head as routing, identity, limits, the contract checks and
/// the wide event see it.
pub trait RequestView {
    /// The method.
    fn method(&self) -> &Method;
    /// The path of the request target (without the query).
    fn path(&self) -> &str;
    /// The query string (without `?`), if the target has one.
    fn query(&self) -> Option<&str>;
    /// The first value of header `name`; `name` is given in lowercase and
    /// matched regardless of case.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// Every value of header `name`, in the order they came.
    fn each_header(&self, name: &str, f: &mut dyn FnMut(&[u8]));
    /// The host of an absolute-form request target (`GET http://h/p`).
    fn target_host(&self) -> Option<&str>;
    /// The protocol version.
    fn version(&self) -> http::Version;
    /// Every header line as `(name, value)`, in order (names in any case).
    fn each_header_line(&self, f: &mut dyn FnMut(&[u8], &[u8]));

    /// The first value of header `name` as text, when it is visible ASCII
    /// (what `http::HeaderValue::to_str` accepts).
    fn header_str(&self, name: &str) -> Option<&str> {
        let value = self.header(name)?;
        if value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            std::str::from_utf8(value).ok()
        } else {
            None
        }
    }

    /// The host the request is for: its `Host` header, else the target's.
    fn host(&self) -> &str {
        self.header_str("host")
            .or_else(|| self.target_host())
            .unwrap_or("")
    }
}

impl<T: RequestView> crate::contract::params::HeaderFields for T {
    fn each_header(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        RequestView::each_header(self, name, f);
    }
}

/// `value` as text when it is ASCII. Header values never hold control
/// bytes other than tab, nor DEL (`httparse` and `http::HeaderValue` both
/// refuse them), so ASCII values are visible ASCII.
pub fn ascii_text(value: &[u8]) -> Option<&str> {
    if value.is_ascii() {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

impl RequestView for http::request::Parts {
    fn method(&self) -> &Method {
        &self.method
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(|v| v.as_bytes())
    }

    fn each_header(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        for value in self.headers.get_all(name) {
            f(value.as_bytes());
        }
    }

    fn target_host(&self) -> Option<&str> {
        self.uri.host()
    }

    fn version(&self) -> http::Version {
        self.version
    }

    fn each_header_line(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value) in &self.headers {
            f(name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

impl RequestView for pingora::http::RequestHeader {
    fn method(&self) -> &Method {
        (**self).method()
    }

    fn path(&self) -> &str {
        (**self).path()
    }

    fn query(&self) -> Option<&str> {
        (**self).query()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        (**self).header(name)
    }

    fn each_header(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        (**self).each_header(name, f);
    }

    fn target_host(&self) -> Option<&str> {
        (**self).target_host()
    }

    fn version(&self) -> http::Version {
        self.version
    }

    fn each_header_line(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value) in &self.headers {
            f(name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_answer_from_their_uri_and_header_map() {
        let (parts, ()) = http::Request::post("http://h.example:8080/a/b?x=1&y=2")
            .header("X-Thing", "one")
            .header("x-thing", "two")
            .header("x-bin", &b"caf\xc3\xa9"[..])
            .body(())
            .expect("a valid request")
            .into_parts();
        assert_eq!(parts.method(), Method::POST);
        assert_eq!(parts.path(), "/a/b");
        assert_eq!(parts.query(), Some("x=1&y=2"));
        assert_eq!(parts.header("x-thing"), Some(&b"one"[..]));
        let mut all = Vec::new();
        parts.each_header("x-thing", &mut |v| all.push(v.to_vec()));
        assert_eq!(all, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(parts.header_str("x-thing"), Some("one"));
        // Not visible ASCII: no text, as `HeaderValue::to_str`.
        assert_eq!(parts.header_str("x-bin"), None);
        assert_eq!(parts.header("absent"), None);
        // No Host header: the target's host.
        assert_eq!(parts.host(), "h.example");
    }
}
