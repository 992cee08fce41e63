//! Finding the end of a chunked body while relaying it as is: the lean
//! engine forwards the upstream's bytes unchanged and only needs to know
//! where the message ends (so the connection can be reused) and which bytes
//! are data (for the response contract's copy).

/// Where the scanner is inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex chunk size.
    Size,
    /// Skipping a chunk extension up to CR.
    Extension,
    /// Expecting LF after the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Expecting the LF that ends a trailer line.
    TrailerLf,
    /// Expecting the final LF.
    LastLf,
    /// The body ended.
    Done,
}

/// A chunked-body scanner.
#[derive(Debug)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    size_digits: u8,
    remaining: u64,
}

/// The body is not valid chunked encoding.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self {
            state: State::Size,
            size: 0,
            size_digits: 0,
            remaining: 0,
        }
    }
}

impl ChunkedScanner {
    /// Scan `bytes`; `data` receives each run of chunk data. Returns the
    /// offset just past the body's end when it ends inside `bytes`.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<Option<usize>, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size_digits += 1;
                        if self.size_digits > 15 {
                            return Err(Malformed);
                        }
                        self.size = self.size * 16 + digit;
                    }
                    b';' | b' ' | b'\t' if self.size_digits > 0 => self.state = State::Extension,
                    b'\r' if self.size_digits > 0 => self.state = State::SizeLf,
                    _ => return Err(Malformed),
                },
                State::Extension => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.state = State::Data;
                    }
                    self.size = 0;
                    self.size_digits = 0;
                }
                State::Data => {
                    let take = (bytes.len() - i).min(self.remaining as usize);
                    data(&bytes[i..i + take]);
                    self.remaining -= take as u64;
                    i += take;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(Malformed);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    self.state = if b == b'\r' {
                        State::LastLf
                    } else {
                        State::Trailer
                    };
                }
                State::Trailer => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = State::TrailerStart;
                }
                State::LastLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = State::Done;
                    return Ok(Some(i + 1));
                }
                State::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(body: &[u8], piece: usize) -> (Option<usize>, Vec<u8>) {
        let mut s = ChunkedScanner::default();
        let mut data = Vec::new();
        let mut offset = 0;
        for chunk in body.chunks(piece) {
            if let Some(end) = s.feed(chunk, |d| data.extend_from_slice(d)).unwrap() {
                return (Some(offset + end), data);
            }
            offset += chunk.len();
        }
        (None, data)
    }

    #[test]
    fn finds_the_end_and_the_data_however_the_bytes_arrive() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for piece in 1..body.len() {
            let (end, data) = scan_in_pieces(body, piece);
            assert_eq!(end, Some(body.len() - 4), "piece {piece}");
            assert_eq!(data, b"hello world", "piece {piece}");
        }
        let (end, data) = scan_in_pieces(b"0\r\n\r\n", 64);
        assert_eq!((end, data.len()), (Some(5), 0));
        let (end, _) = scan_in_pieces(b"A\r\n0123456789\r\n", 64);
        assert_eq!(end, None);
    }

    #[test]
    fn refuses_malformed_chunking() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"5\rX",
            b"fffffffffffffffff\r\n",
        ] {
            let mut s = ChunkedScanner::default();
            assert_eq!(s.feed(bad, |_| {}), Err(Malformed), "{bad:?}");
        }
    }
}
