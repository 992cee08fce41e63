//! Anchored patterns of ASCII classes, matched without a regex engine.
//!
//! Contract patterns are mostly identifiers: `^SKU-[0-9]{5}$`,
//! `^[A-Z]{3}$`, `^[a-z0-9_]+$`. Such a pattern is `^`, then atoms, each
//! with an optional quantifier (`?`, `*`, `+`, `{n}`, `{n,}`, `{n,m}`),
//! then an optional `$`. An atom is a printable ASCII literal, `\d`, `\w`,
//! an escaped ASCII punctuation character, or a class `[…]` of those and
//! ASCII ranges. It compiles into [`Pattern`] steps that are matched left
//! to right, each taking as many characters as it can, with no
//! backtracking.
//!
//! Taking as many as it can is what a regex engine would end up doing only
//! when a step of varying count is last, or is followed by a step that
//! needs at least one character it cannot take itself (the classes do not
//! overlap). [`Pattern::compile`] accepts only such patterns; anything else
//! (`.`, groups, alternation, negated classes, lazy quantifiers, other
//! escapes, non-ASCII literals, no leading `^`) is left to `jsonschema`.
//!
//! Only ASCII characters are in any class, so a byte at or above 0x80 (part
//! of a multi-byte character) stops a step exactly where a regex engine's
//! character would fail, and counting bytes is counting characters.

use super::Words;

/// A set of ASCII bytes, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Class(u128);

impl Class {
    const EMPTY: Class = Class(0);

    fn add(&mut self, c: u8) {
        if c < 128 {
            self.0 |= 1 << c;
        }
    }

    fn add_range(&mut self, lo: u8, hi: u8) {
        for c in lo..=hi {
            self.add(c);
        }
    }

    fn add_class(&mut self, other: Class) {
        self.0 |= other.0;
    }

    #[inline]
    fn has(self, c: u8) -> bool {
        c < 128 && (self.0 >> (c & 127)) & 1 != 0
    }

    fn overlaps(self, other: Class) -> bool {
        self.0 & other.0 != 0
    }

    /// The one byte in the class, if it has exactly one.
    fn single(self) -> Option<u8> {
        (self.0.count_ones() == 1).then(|| self.0.trailing_zeros() as u8)
    }

    fn digits() -> Class {
        let mut c = Class::EMPTY;
        c.add_range(b'0', b'9');
        c
    }

    fn word() -> Class {
        let mut c = Class::digits();
        c.add_range(b'a', b'z');
        c.add_range(b'A', b'Z');
        c.add(b'_');
        c
    }
}

/// One atom and how many times it repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    class: Class,
    min: u32,
    /// `u32::MAX`: unbounded.
    max: u32,
}

/// What a compiled pattern does at one point of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Match {
    /// These bytes, once each (a run of single-character atoms).
    Literal(Words),
    /// Exactly `count` bytes of the class.
    Fixed { class: Table, count: usize },
    /// As many bytes of the class as there are, up to `max`, at least `min`.
    Run {
        class: Table,
        min: usize,
        max: usize,
    },
}

/// A class as a lookup table: one load per byte.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table(Box<[bool; 256]>);

impl Table {
    fn new(class: Class) -> Self {
        let mut table = Box::new([false; 256]);
        for (c, slot) in (0u8..=255).zip(table.iter_mut()) {
            *slot = class.has(c);
        }
        Table(table)
    }

    #[inline]
    fn has(&self, c: u8) -> bool {
        self.0[usize::from(c)]
    }
}

/// A compiled pattern (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pattern {
    matches: Box<[Match]>,
    /// Ends with `$`: the steps must take the whole text.
    whole: bool,
}

/// Largest repeat count accepted in `{…}`.
const MAX_COUNT: u32 = 10_000;

/// Whether `c` is a regex syntax character in ECMA-262.
fn is_syntax(c: u8) -> bool {
    matches!(
        c,
        b'^' | b'$'
            | b'\\'
            | b'.'
            | b'*'
            | b'+'
            | b'?'
            | b'('
            | b')'
            | b'['
            | b']'
            | b'{'
            | b'}'
            | b'|'
    )
}

struct Parser<'p> {
    p: &'p [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.p.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    /// After a `\`: `\d`, `\w` or escaped ASCII punctuation.
    fn escape(&mut self) -> Option<Class> {
        let c = self.next()?;
        let mut class = Class::EMPTY;
        match c {
            b'd' => return Some(Class::digits()),
            b'w' => return Some(Class::word()),
            c if c.is_ascii_punctuation() => class.add(c),
            _ => return None,
        }
        Some(class)
    }

    /// A single character inside a class: its byte, or a shorthand class.
    fn class_member(&mut self) -> Option<Result<u8, Class>> {
        match self.next()? {
            // An escaped character is itself; `\d` and `\w` are classes.
            b'\\' => self.escape().map(|class| class.single().ok_or(class)),
            b'[' => None,
            c if (0x20..0x7f).contains(&c) => Some(Ok(c)),
            _ => None,
        }
    }

    /// After a `[`: the class up to its `]`.
    fn class(&mut self) -> Option<Class> {
        if matches!(self.peek()?, b'^' | b']') {
            return None;
        }
        let mut class = Class::EMPTY;
        loop {
            if self.peek()? == b']' {
                self.at += 1;
                break;
            }
            match self.class_member()? {
                Err(shorthand) => class.add_class(shorthand),
                Ok(lo) => {
                    // `a-z`; a `-` before `]` is itself.
                    if self.peek()? == b'-' && self.p.get(self.at + 1) != Some(&b']') {
                        self.at += 1;
                        let hi = self.class_member()?.ok()?;
                        if lo > hi {
                            return None;
                        }
                        class.add_range(lo, hi);
                    } else {
                        class.add(lo);
                    }
                }
            }
        }
        (class != Class::EMPTY).then_some(class)
    }

    fn number(&mut self) -> Option<u32> {
        let from = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        let digits = std::str::from_utf8(self.p.get(from..self.at)?).ok()?;
        digits.parse().ok().filter(|&n| n <= MAX_COUNT)
    }

    /// The quantifier after an atom: `(min, max)`.
    fn quantifier(&mut self) -> Option<(u32, u32)> {
        let counts = match self.peek() {
            Some(b'?') => (0, 1),
            Some(b'*') => (0, u32::MAX),
            Some(b'+') => (1, u32::MAX),
            Some(b'{') => {
                self.at += 1;
                let min = self.number()?;
                let max = match self.next()? {
                    b'}' => return self.not_lazy((min, min)),
                    b',' if self.peek()? == b'}' => u32::MAX,
                    b',' => self.number()?,
                    _ => return None,
                };
                if self.next()? != b'}' || min > max {
                    return None;
                }
                return self.not_lazy((min, max));
            }
            _ => return Some((1, 1)),
        };
        self.at += 1;
        self.not_lazy(counts)
    }

    fn not_lazy(&mut self, counts: (u32, u32)) -> Option<(u32, u32)> {
        (self.peek() != Some(b'?')).then_some(counts)
    }
}

impl Pattern {
    /// Compile `pattern` when it is of the simple kind this module matches
    /// exactly; `None` otherwise.
    pub(super) fn compile(pattern: &str) -> Option<Pattern> {
        let mut p = Parser {
            p: pattern.as_bytes(),
            at: 0,
        };
        if p.next()? != b'^' {
            return None;
        }
        let mut steps = Vec::new();
        let mut whole = false;
        while let Some(c) = p.next() {
            let class = match c {
                b'$' if p.peek().is_none() => {
                    whole = true;
                    break;
                }
                b'\\' => p.escape()?,
                b'[' => p.class()?,
                c if (0x20..0x7f).contains(&c) && !is_syntax(c) => {
                    let mut class = Class::EMPTY;
                    class.add(c);
                    class
                }
                _ => return None,
            };
            let (min, max) = p.quantifier()?;
            steps.push(Step { class, min, max });
        }
        // A step of varying count must be last, or be followed by one that
        // needs a character it cannot take.
        for (i, s) in steps.iter().enumerate() {
            if s.min != s.max {
                if let Some(next) = steps.get(i + 1) {
                    if next.min == 0 || next.class.overlaps(s.class) {
                        return None;
                    }
                }
            }
        }
        Some(Pattern {
            matches: lower(&steps).into_boxed_slice(),
            whole,
        })
    }

    /// Whether `text` matches.
    pub(super) fn matches(&self, text: &str) -> bool {
        let mut rest = text.as_bytes();
        for m in self.matches.iter() {
            let taken = match m {
                Match::Literal(bytes) => bytes.starts(rest).then_some(bytes.len()),
                Match::Fixed { class, count } => rest
                    .get(..*count)
                    .filter(|head| head.iter().all(|&c| class.has(c)))
                    .map(<[u8]>::len),
                Match::Run { class, min, max } => {
                    let n = rest
                        .iter()
                        .take(*max)
                        .take_while(|&&c| class.has(c))
                        .count();
                    (n >= *min).then_some(n)
                }
            };
            match taken.and_then(|n| rest.get(n..)) {
                Some(after) => rest = after,
                None => return false,
            }
        }
        !self.whole || rest.is_empty()
    }
}

/// Steps → matches: runs of single bytes become literals.
fn lower(steps: &[Step]) -> Vec<Match> {
    let mut out: Vec<Match> = Vec::new();
    // The bytes of the literal being gathered.
    let mut literal: Vec<u8> = Vec::new();
    for s in steps {
        let count = s.min as usize;
        if let (Some(byte), true) = (s.class.single(), s.min == s.max) {
            literal.extend(std::iter::repeat_n(byte, count));
            continue;
        }
        if !literal.is_empty() {
            out.push(Match::Literal(Words::new(&std::mem::take(&mut literal))));
        }
        let class = Table::new(s.class);
        out.push(if s.min == s.max {
            Match::Fixed { class, count }
        } else {
            Match::Run {
                class,
                min: count,
                max: if s.max == u32::MAX {
                    usize::MAX
                } else {
                    s.max as usize
                },
            }
        });
    }
    if !literal.is_empty() {
        out.push(Match::Literal(Words::new(&literal)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn identifier_patterns_compile_and_match() {
        let sku = Pattern::compile("^SKU-[0-9]{5}$").expect("compiles");
        assert!(sku.matches("SKU-00037"));
        assert!(!sku.matches("SKU-0003"));
        assert!(!sku.matches("SKU-000370"));
        assert!(!sku.matches("sku-00037"));
        assert!(!sku.matches("SKU-0003٣"));
        let slug = Pattern::compile(r"^[a-z][a-z0-9\-]*$").expect("compiles");
        assert!(slug.matches("orders-v2"));
        assert!(!slug.matches("2orders"));
        let prefix = Pattern::compile(r"^\d{3}\.").expect("compiles");
        assert!(prefix.matches("123.anything é"));
        assert!(!prefix.matches("12.3"));
    }

    #[test]
    fn patterns_it_cannot_match_exactly_are_left_alone() {
        for p in [
            "SKU",
            "^[a-z]+[a-z]$",
            "^[a-z]*[0-9]?x$",
            "^a.b$",
            "^(ab)+$",
            "^a|b$",
            "^[^a]$",
            "^a+?$",
            r"^\s$",
            "^é$",
            "^[]$",
            "^a{2,1}$",
            "^a$b",
        ] {
            assert_eq!(Pattern::compile(p), None, "{p}");
        }
    }

    fn atom() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "a", "b", "-", r"\d", r"\w", r"\.", ".", "[ab]", "[a-c]", "[0-9]", r"[\d_]", "[b-]",
            "[^a]", "(a)", "é",
        ])
        .prop_map(str::to_owned)
    }

    fn quantifier() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "", "", "", "?", "*", "+", "{2}", "{0,2}", "{1,}", "{2,3}", "+?",
        ])
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["^", "^", "^", ""]),
            prop::collection::vec((atom(), quantifier()), 0..5),
            prop::sample::select(vec!["$", "$", ""]),
        )
            .prop_map(|(start, atoms, end)| {
                let mut p = start.to_owned();
                for (a, q) in atoms {
                    p.push_str(&a);
                    p.push_str(q);
                }
                p.push_str(end);
                p
            })
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!['a', 'b', 'c', '-', '.', '_', '0', '7', '٣', 'é', 'A']),
            0..7,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Whenever a pattern compiles here, it matches as `jsonschema`'s
        /// `pattern` keyword does.
        #[test]
        fn matches_as_jsonschema_does(p in pattern(), texts in prop::collection::vec(text(), 1..8)) {
            let Some(compiled) = Pattern::compile(&p) else {
                return Ok(());
            };
            let validator = jsonschema::validator_for(&json!({ "pattern": p })).expect("a valid pattern");
            for t in texts {
                prop_assert_eq!(compiled.matches(&t), validator.is_valid(&json!(t)), "{} on {:?}", p, t);
            }
        }
    }
}
