//! The parser that reads a body once and checks it against the nodes.

use std::sync::atomic::Ordering;

use rustc_hash::FxHashMap;

use super::{types, Node, NodeId, Num, Read, Step, Stop, MAX_DEPTH, MAX_OTHER_MEMBERS};

/// The parser: one position in the body, and the program's nodes.
pub(super) struct Scan<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    depth: u32,
    nodes: &'a [Node],
    /// Member names of the open objects that their schema's `properties`
    /// do not name (as byte ranges), to find repeats.
    others: Vec<(usize, usize)>,
    /// The verdict of each subschema of an applicator on each value it
    /// read again, by (node, where the value starts): a value is judged
    /// against a node at most once, so the work is bounded by the body's
    /// size times the schema's, however the applicators nest or recurse.
    verdicts: FxHashMap<(NodeId, usize), Step>,
}

impl<'a> Scan<'a> {
    /// A parser at the start of `text`.
    pub(super) fn new(text: &'a str, nodes: &'a [Node]) -> Self {
        Self {
            text,
            bytes: text.as_bytes(),
            at: 0,
            depth: 0,
            nodes,
            others: Vec::new(),
            verdicts: FxHashMap::default(),
        }
    }

    /// Whether all of the text has been read.
    pub(super) fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    pub(super) fn skip_space(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    fn node(&self, id: Option<NodeId>) -> Option<&'a Node> {
        let nodes = self.nodes;
        id.and_then(|id| nodes.get(id as usize))
    }

    fn enter(&mut self) -> Step {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Stop::Unsure);
        }
        Ok(())
    }

    /// After a member or element: `true` at `close` (stepped over), `false`
    /// at a comma (stepped over), unsure at anything else.
    fn closes(&mut self, close: u8) -> Result<bool, Stop> {
        self.skip_space();
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(false)
            }
            Some(c) if c == close => {
                self.at += 1;
                Ok(true)
            }
            _ => Err(Stop::Unsure),
        }
    }

    /// Read one value and check it against `id` (`None`: any value).
    pub(super) fn value(&mut self, id: Option<NodeId>) -> Step {
        self.skip_space();
        self.value_here(id)
    }

    /// [`Scan::value`], with the cursor already past any white space.
    ///
    /// Kept small: objects and arrays are read out of line, so the
    /// scalars that make up most of a body cost no large stack frame.
    fn value_here(&mut self, id: Option<NodeId>) -> Step {
        let start = self.at;
        let node = self.node(id);
        match self.peek().ok_or(Stop::Unsure)? {
            b'{' => self.object(node)?,
            b'[' => self.array(node)?,
            b'"' => self.string_value(node)?,
            b't' => self.literal(b"true", node, types::BOOL, Read::Bool(true))?,
            b'f' => self.literal(b"false", node, types::BOOL, Read::Bool(false))?,
            b'n' => self.literal(b"null", node, types::NULL, Read::Null)?,
            _ => self.number_value(node)?,
        }
        match node {
            Some(n) if n.applicators => self.applicators(n, start),
            _ => Ok(()),
        }
    }

    /// A member's or an element's value: a string (the most common value,
    /// and the cheapest to read) is read here, in the caller's frame, when
    /// its schema has no applicators; anything else through [`Scan::value`].
    #[inline]
    fn element(&mut self, id: Option<NodeId>) -> Step {
        self.skip_space();
        if self.peek() == Some(b'"') {
            let node = self.node(id);
            if !node.is_some_and(|n| n.applicators) {
                return self.string_value(node);
            }
        }
        self.value_here(id)
    }

    /// Read a number and check it against `node`.
    #[inline]
    fn number_value(&mut self, node: Option<&Node>) -> Step {
        let number = self.number(node.is_some_and(|n| n.number_checks))?;
        match (node, number) {
            (Some(n), Some(number)) => n.check_number(number),
            _ => Ok(()),
        }
    }

    /// Read a string value and check it against `node`.
    #[inline]
    fn string_value(&mut self, node: Option<&Node>) -> Step {
        let (from, to, escaped) = self.string()?;
        let Some(n) = node else {
            return Ok(());
        };
        if n.types & types::STR == 0 {
            return Err(Stop::Invalid);
        }
        if !n.text_checks {
            return Ok(());
        }
        if escaped {
            return self.escaped_text(n, from, to);
        }
        n.check_text(self.text.get(from..to).ok_or(Stop::Unsure)?)
    }

    /// Rare: `serde_json` itself reads a quoted string with escapes.
    #[cold]
    fn escaped_text(&self, n: &Node, from: usize, to: usize) -> Step {
        let quoted = self.text.get(from - 1..to + 1).ok_or(Stop::Unsure)?;
        let text: String = serde_json::from_str(quoted).map_err(|_| Stop::Unsure)?;
        n.check_text(&text)
    }

    fn literal(&mut self, word: &[u8], node: Option<&Node>, bit: u8, read: Read<'_>) -> Step {
        if !self
            .bytes
            .get(self.at..)
            .is_some_and(|b| b.starts_with(word))
        {
            return Err(Stop::Unsure);
        }
        self.at += word.len();
        match node {
            Some(n) if n.types & bit == 0 => Err(Stop::Invalid),
            Some(n) => n.in_enums(read),
            None => Ok(()),
        }
    }

    /// `allOf`, `anyOf`, `oneOf` and `not` over the value just read
    /// (from `start` to here): each subschema reads it again.
    fn applicators(&mut self, n: &Node, start: usize) -> Step {
        let end = self.at;
        for &a in &n.all_of {
            self.again(a, start, end)?;
        }
        if !n.any_of.is_empty() {
            let mut any = false;
            for &a in &n.any_of {
                match self.again(a, start, end) {
                    Ok(()) => {
                        any = true;
                        break;
                    }
                    Err(Stop::Invalid) => {}
                    Err(Stop::Unsure) => return Err(Stop::Unsure),
                }
            }
            if !any {
                return Err(Stop::Invalid);
            }
        }
        if !n.one_of.is_empty() {
            let mut passed = 0;
            for &a in &n.one_of {
                match self.again(a, start, end) {
                    Ok(()) => passed += 1,
                    Err(Stop::Invalid) => {}
                    Err(Stop::Unsure) => return Err(Stop::Unsure),
                }
            }
            if passed != 1 {
                return Err(Stop::Invalid);
            }
        }
        if let Some(a) = n.not {
            match self.again(a, start, end) {
                Ok(()) => return Err(Stop::Invalid),
                Err(Stop::Invalid) => {}
                Err(Stop::Unsure) => return Err(Stop::Unsure),
            }
        }
        Ok(())
    }

    /// Read the value at `start..end` again against `id` (or recall the
    /// verdict, when it was read against `id` before). A verdict does not
    /// depend on where the value sits: `Unsure` from the depth limit
    /// makes the whole check unsure wherever it is found.
    fn again(&mut self, id: NodeId, start: usize, end: usize) -> Step {
        if let Some(&verdict) = self.verdicts.get(&(id, start)) {
            return verdict;
        }
        let verdict = self.read_again(id, start, end);
        self.verdicts.insert((id, start), verdict);
        verdict
    }

    fn read_again(&mut self, id: NodeId, start: usize, end: usize) -> Step {
        let (depth, others) = (self.depth, self.others.len());
        self.enter()?;
        self.at = start;
        let verdict = match self.value(Some(id)) {
            Ok(()) if self.at != end => Err(Stop::Unsure),
            v => v,
        };
        self.at = end;
        self.depth = depth;
        self.others.truncate(others);
        verdict
    }

    #[inline(never)]
    fn object(&mut self, node: Option<&'a Node>) -> Step {
        if node.is_some_and(|n| n.types & types::OBJ == 0) {
            return Err(Stop::Invalid);
        }
        self.enter()?;
        self.at += 1;
        let others = self.others.len();
        let mut seen = 0u64;
        let mut members = 0u64;
        // Members usually come in the order of the bodies before: names
        // are matched against the raw bytes from the property that usually
        // follows the last one found.
        let mut last = node.map_or(0, |n| n.properties.len());
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
        } else {
            loop {
                self.skip_space();
                if self.peek() != Some(b'"') {
                    return Err(Stop::Unsure);
                }
                let schema = match node {
                    None => {
                        self.other_member(others)?;
                        None
                    }
                    Some(n) => {
                        let (i, schema) = self.member(n, last, &mut seen, others)?;
                        if i < n.properties.len() {
                            last = i;
                        }
                        schema
                    }
                };
                self.skip_space();
                if self.peek() != Some(b':') {
                    return Err(Stop::Unsure);
                }
                self.at += 1;
                members += 1;
                self.element(schema)?;
                if self.closes(b'}')? {
                    break;
                }
            }
        }
        self.others.truncate(others);
        self.depth -= 1;
        if let Some(n) = node {
            if seen & n.required != n.required
                || n.min_properties.is_some_and(|m| members < m)
                || n.max_properties.is_some_and(|m| members > m)
            {
                return Err(Stop::Invalid);
            }
            n.in_enums(Read::Container)?;
        }
        Ok(())
    }

    /// Read the member name at the cursor (an opening quote) of an object
    /// checked against `n`: the index of its property (or one past the
    /// last) and the schema its value must meet. Repeats are unsure.
    fn member(
        &mut self,
        n: &Node,
        last: usize,
        seen: &mut u64,
        others: usize,
    ) -> Result<(usize, Option<NodeId>), Stop> {
        let bytes = self.bytes;
        let from = self.at + 1;
        let rest = bytes.get(from..).ok_or(Stop::Unsure)?;
        // A property matches when its name and then a quote follow.
        let properties = &n.properties;
        let mut raw = None;
        let guess = n
            .follows
            .get(last)
            .map_or(0, |g| usize::from(g.load(Ordering::Relaxed)));
        let mut i = if guess < properties.len() { guess } else { 0 };
        for _ in 0..properties.len() {
            if let Some(quoted) = properties.get(i).and_then(|p| p.quoted.as_ref()) {
                if quoted.starts(rest) {
                    raw = Some((i, quoted.len()));
                    break;
                }
            }
            i = if i + 1 < properties.len() { i + 1 } else { 0 };
        }
        let found = if let Some((i, len)) = raw {
            self.at = from + len;
            if i != guess {
                if let (Some(g), Ok(i)) = (n.follows.get(last), u8::try_from(i)) {
                    g.store(i, Ordering::Relaxed);
                }
            }
            Some(i)
        } else {
            // Not a property: no unescaped name can equal one that JSON
            // must escape.
            self.other_member(others)?;
            None
        };
        let Some(i) = found else {
            return Ok((n.properties.len(), n.additional));
        };
        let bit = 1u64 << i;
        if *seen & bit != 0 {
            return Err(Stop::Unsure);
        }
        *seen |= bit;
        // Named only by `required`: `additionalProperties` applies.
        let property = n.properties.get(i).ok_or(Stop::Unsure)?;
        Ok((i, property.schema.or(n.additional)))
    }

    /// Read a member name that names no property, at the cursor (an
    /// opening quote), in an object whose names since `others` are noted:
    /// a name seen before in the object (I-JSON names are unique), an
    /// escaped one, or too many to compare are unsure.
    fn other_member(&mut self, others: usize) -> Step {
        let (from, to, escaped) = self.string()?;
        if escaped {
            return Err(Stop::Unsure);
        }
        let bytes = self.bytes;
        let named = bytes.get(from..to).ok_or(Stop::Unsure)?;
        if self.others.len() - others >= MAX_OTHER_MEMBERS
            || self.others[others..]
                .iter()
                .any(|&(f, t)| &bytes[f..t] == named)
        {
            return Err(Stop::Unsure);
        }
        self.others.push((from, to));
        Ok(())
    }

    #[inline(never)]
    fn array(&mut self, node: Option<&'a Node>) -> Step {
        if node.is_some_and(|n| n.types & types::ARR == 0) {
            return Err(Stop::Invalid);
        }
        self.enter()?;
        self.at += 1;
        let items = node.and_then(|n| n.items);
        let mut count = 0u64;
        self.skip_space();
        if self.peek() == Some(b']') {
            self.at += 1;
        } else {
            loop {
                self.element(items)?;
                count += 1;
                if self.closes(b']')? {
                    break;
                }
            }
        }
        self.depth -= 1;
        if let Some(n) = node {
            if n.min_items.is_some_and(|m| count < m) || n.max_items.is_some_and(|m| count > m) {
                return Err(Stop::Invalid);
            }
            n.in_enums(Read::Container)?;
        }
        Ok(())
    }

    /// Read a string; its raw contents' range and whether it has escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), Stop> {
        let from = self.at + 1;
        let mut at = from;
        let mut escaped = false;
        loop {
            at += plain_run(self.bytes.get(at..).ok_or(Stop::Unsure)?);
            match self.bytes.get(at) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.at = at;
                    self.escape()?;
                    at = self.at;
                }
                // A control character, or the end of the body.
                _ => return Err(Stop::Unsure),
            }
        }
        self.at = at + 1;
        Ok((from, at, escaped))
    }

    /// Step over one escape; escaped surrogates are unsure.
    fn escape(&mut self) -> Step {
        match self.bytes.get(self.at + 1).ok_or(Stop::Unsure)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                self.at += 2;
                Ok(())
            }
            b'u' => {
                let hex = self
                    .text
                    .get(self.at + 2..self.at + 6)
                    .ok_or(Stop::Unsure)?;
                let code = u16::from_str_radix(hex, 16).map_err(|_| Stop::Unsure)?;
                if hex.starts_with('+') || (0xD800..0xE000).contains(&code) {
                    return Err(Stop::Unsure);
                }
                self.at += 6;
                Ok(())
            }
            _ => Err(Stop::Unsure),
        }
    }

    /// Read a number (JSON's grammar); its value when `want` is set.
    ///
    /// The cursor is a local until the end, and the fraction's digits are
    /// gathered as they are read, for [`short_decimal`].
    fn number(&mut self, want: bool) -> Result<Option<Num>, Stop> {
        let bytes = self.bytes;
        let from = self.at;
        let negative = bytes.get(from) == Some(&b'-');
        let mut at = from + usize::from(negative);
        let mut value: Option<u64> = Some(0);
        match bytes.get(at) {
            Some(b'0') => {
                at += 1;
                if digit(bytes, at).is_some() {
                    return Err(Stop::Unsure);
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(d) = digit(bytes, at) {
                    value = value
                        .and_then(|v| v.checked_mul(10))
                        .and_then(|v| v.checked_add(d));
                    at += 1;
                }
            }
            _ => return Err(Stop::Unsure),
        }
        let whole_digits = at - from - usize::from(negative);
        // The fraction: its digits as an integer (while they fit) and count.
        let mut fraction: Option<(u64, usize)> = None;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            let digits = at;
            let mut f = 0u64;
            while let Some(d) = digit(bytes, at) {
                f = f.wrapping_mul(10).wrapping_add(d);
                at += 1;
            }
            if at == digits {
                return Err(Stop::Unsure);
            }
            fraction = Some((f, at - digits));
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = bytes.get(at) {
            at += 1;
            exponent = true;
            if let Some(b'+' | b'-') = bytes.get(at) {
                at += 1;
            }
            let digits = at;
            while digit(bytes, at).is_some() {
                at += 1;
            }
            if at == digits {
                return Err(Stop::Unsure);
            }
        }
        self.at = at;
        // More than its double says (I-JSON): left to the reference.
        // An integer a 64-bit integer holds is exact (`serde_json` reads
        // it so); any other long number may say more than its double.
        let exact_integer = fraction.is_none() && value.is_some_and(|v| !negative || v <= 1 << 63);
        if exponent
            || (whole_digits + fraction.map_or(0, |(_, count)| count) > 15 && !exact_integer)
        {
            let text = self.text.get(from..at).ok_or(Stop::Unsure)?;
            if crate::contract::ijson::too_precise(text) {
                return Err(Stop::Unsure);
            }
        }
        if !want {
            return Ok(None);
        }
        // As `serde_json`: integers in range as such, `-0` and the rest as `f64`.
        let exact = match (fraction.is_none() && !exponent, value, negative) {
            (true, Some(v), false) => Some(Num::U(v)),
            (true, Some(v), true) if v != 0 => i64::try_from(v)
                .ok()
                .map(|v| Num::I(-v))
                .or((v == 1 << 63).then_some(Num::I(i64::MIN))),
            _ => None,
        };
        if let Some(n) = exact {
            return Ok(Some(n));
        }
        if let (Some((digits, count)), false) = (fraction, exponent) {
            if let Some(f) = short_decimal(value, digits, count, whole_digits) {
                return Ok(Some(Num::F(if negative { -f } else { f })));
            }
        }
        let text = self.text.get(from..at).ok_or(Stop::Unsure)?;
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Some(Num::F(f))),
            _ => Err(Stop::Unsure),
        }
    }
}

/// The decimal digit at `at` in `bytes`, as its value.
#[inline]
fn digit(bytes: &[u8], at: usize) -> Option<u64> {
    let d = bytes.get(at)?.wrapping_sub(b'0');
    (d <= 9).then_some(u64::from(d))
}

/// Powers of ten that are exact as `f64`, up to what [`short_decimal`] needs.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A decimal with no exponent and at most 15 digits in all, as the nearest
/// `f64` (what a correct parser gives): its digits as an integer and ten to
/// the number of fraction digits are both exact as `f64`, and one IEEE
/// division of exact operands rounds correctly. `None` for longer numbers.
/// `fraction` is the fraction's digits read as an integer, `count` how many
/// there are. With at most 15 digits in all, `whole · 10^count` and its sum
/// with `fraction` are below 2^53, so both float steps are exact too.
pub(super) fn short_decimal(
    whole: Option<u64>,
    fraction: u64,
    count: usize,
    whole_digits: usize,
) -> Option<f64> {
    let scale = POW10.get(count)?;
    if whole_digits + count > 15 {
        return None;
    }
    let digits = whole? as f64 * scale + fraction as f64;
    Some(digits / scale)
}

/// How many bytes at the start of `bytes` are plain string contents: not
/// `"`, `\\` or a control character. Eight bytes at a time: a byte below
/// `n` sets its top bit in `(x - n·0x01…) & !x & 0x80…`, and the lowest
/// flagged byte is always a true one. Flipping bit 1 maps the control
/// characters and `"` (and only those) below 0x21, so one test finds both.
pub(super) fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const TOPS: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
    let mut run = 0;
    for chunk in bytes.chunks_exact(8) {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(chunk);
        let found = (below(x ^ (ONES * 2), 0x21) | below(x ^ (ONES * u64::from(b'\\')), 1)) & TOPS;
        if found != 0 {
            return run + (found.trailing_zeros() / 8) as usize;
        }
        run += 8;
    }
    run + bytes[run..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(bytes.len() - run)
}
