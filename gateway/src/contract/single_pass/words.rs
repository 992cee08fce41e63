//! Byte strings compared with a body's bytes a word at a time.

/// Bytes as little-endian 8-byte words, the last one masked to their
/// length. Compared with a body a word at a time, with no call to
/// `memcmp`, a text that differs is usually told by its first word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Words {
    /// The first word and its mask, inline: most texts that differ are
    /// told by it.
    first: (u64, u64),
    /// The other words and their masks.
    more: Box<[(u64, u64)]>,
    len: usize,
}

impl Words {
    pub(super) fn new(bytes: &[u8]) -> Self {
        let mut words = bytes.chunks(8).map(|chunk| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            let mask = u64::MAX >> (8 * (8 - chunk.len()));
            (u64::from_le_bytes(word), mask)
        });
        Self {
            first: words.next().unwrap_or((0, 0)),
            more: words.collect(),
            len: bytes.len(),
        }
    }

    /// How many bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether `bytes` starts with these bytes.
    #[inline]
    pub(super) fn starts(&self, bytes: &[u8]) -> bool {
        let (word, mask) = self.first;
        if bytes.len() < self.len || word_at(bytes, 0) & mask != word {
            return false;
        }
        let mut at = 8;
        for &(word, mask) in self.more.iter() {
            if word_at(bytes, at) & mask != word {
                return false;
            }
            at += 8;
        }
        true
    }
}

/// The eight bytes of `bytes` from `at` as a little-endian word, zeros
/// past the end.
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    if let Some(Ok(word)) = bytes.get(at..at + 8).map(<[u8; 8]>::try_from) {
        return u64::from_le_bytes(word);
    }
    let mut word = [0u8; 8];
    let tail = bytes.get(at..).unwrap_or_default();
    let n = tail.len().min(8);
    word[..n].copy_from_slice(&tail[..n]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Word at a time is `starts_with`, for any lengths and wherever
        /// the bytes end.
        #[test]
        fn starts_as_starts_with_does(
            needle in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'"'), any::<u8>()], 0..26),
            hay in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'"'), any::<u8>()], 0..30),
            copy in any::<bool>(),
        ) {
            let hay = if copy { [&needle[..], &hay[..]].concat() } else { hay };
            prop_assert_eq!(Words::new(&needle).starts(&hay), hay.starts_with(&needle));
        }
    }
}
