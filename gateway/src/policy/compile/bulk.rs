//! Reading a large policy file one consumer at a time: a file of a million
//! consumers is never held as one `serde_json::Value` (several times the
//! size of its text). Each consumer is parsed on its own, checked against
//! the schema's consumer definition, written to the version's digest in
//! canonical form and kept as a `ConsumerSpec`; the rest of the file is
//! read and checked as usual.
//!
//! The version must be the same bytes as reading the whole file would
//! give (stored bundles are checked against it). The consumers' canonical
//! bytes are written to a copy of the version's hasher as they come; that
//! is right when every top-level key sorted before `consumers` (`apps`)
//! came before it in the file and `consumers` came once. When not, this
//! stops and returns [`Read::Whole`]: the caller reads the file whole.
//!
//! JSON is read as a stream. The YAML reader (`serde_yaml`) loads a whole
//! document's events before it deserializes anything, so a large YAML
//! file saves only the parsed tree, not the events.

use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{schema_validator, POLICY_SCHEMA};
use crate::contract::documents::{canonical_json, json_error, yaml_error};
use crate::policy::model::{ConsumerSpec, PolicyFile};
use crate::source::{PolicyError, SourceFile};

/// A validator for one consumer (`#/$defs/consumer` of the policy schema).
fn consumer_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(POLICY_SCHEMA)
            .expect("policy.schema.json is valid JSON (checked by tests)");
        let one = serde_json::json!({
            "$schema": schema["$schema"],
            "$ref": "#/$defs/consumer",
            "$defs": schema["$defs"],
        });
        jsonschema::validator_for(&one)
            .expect("policy.schema.json's consumer definition is a valid JSON Schema")
    })
}

/// What reading the file gave.
pub enum Read {
    /// The file (its consumers in it), its digest written to the hasher.
    File(PolicyFile),
    /// The file's errors.
    Errors(Vec<PolicyError>),
    /// This file cannot be read this way (its keys' order, a `consumers`
    /// that is not a list, or twice): read it whole.
    Whole,
}

/// Read `src`, writing its path and canonical form to `out` (the
/// version's hasher) as reading the whole file would; `out` is left as it
/// was unless a file is returned.
pub fn read(src: &SourceFile, out: &mut Sha256) -> Read {
    let mut state = State {
        path: &src.path,
        hasher: out.clone(),
        rest: Map::new(),
        consumers: Vec::new(),
        count: 0,
        seen_consumers: false,
        whole: false,
        errors: Vec::new(),
    };
    let parsed = if src.path.ends_with(".json") {
        let mut de = serde_json::Deserializer::from_str(&src.text);
        FileSeed(&mut state)
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| json_error(&src.path, &e))
    } else {
        FileSeed(&mut state)
            .deserialize(serde_yaml::Deserializer::from_str(&src.text))
            .map_err(|e| yaml_error(&src.path, &e))
    };
    if state.whole {
        return Read::Whole;
    }
    if let Err(e) = parsed {
        if src.path.ends_with(".json") {
            // The same reader at the same place: the whole reading's error.
            return Read::Errors(vec![e]);
        }
        // YAML a map-shaped reading refuses (a tag, say): what reading it
        // whole reports.
        return match crate::contract::documents::parse_text(&src.path, &src.text) {
            Ok(_) => Read::Whole,
            Err(whole) => Read::Errors(vec![whole]),
        };
    }
    let State {
        mut hasher,
        mut rest,
        consumers,
        mut errors,
        seen_consumers,
        ..
    } = state;
    if !seen_consumers {
        return Read::Whole;
    }
    // The rest of the canonical form: the keys sorted after `consumers`.
    for (k, v) in sorted(&rest).filter(|(k, _)| k.as_str() > "consumers") {
        hasher.update(b",");
        hasher.update(serde_json::to_vec(k).unwrap_or_default());
        hasher.update(b":");
        hasher.update(canonical_json(v));
    }
    hasher.update(b"}");
    hasher.update([0]);
    // The rest of the file, checked as the whole file would be.
    rest.insert("consumers".into(), Value::Array(Vec::new()));
    let rest = Value::Object(rest);
    errors.extend(
        schema_validator().iter_errors(&rest).map(|err| {
            PolicyError::new(&src.path, err.instance_path().to_string(), err.to_string())
        }),
    );
    if !errors.is_empty() {
        return Read::Errors(errors);
    }
    match serde_json::from_value::<PolicyFile>(rest) {
        Ok(mut file) => {
            file.consumers = consumers;
            *out = hasher;
            Read::File(file)
        }
        Err(e) => Read::Errors(vec![PolicyError::new(&src.path, "", e.to_string())]),
    }
}

/// A map's entries by key (as the canonical form writes them, whatever
/// order the map keeps).
fn sorted(map: &Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries.into_iter()
}

/// What reading one file has gathered.
struct State<'a> {
    path: &'a str,
    /// A copy of the version's hasher, written to as the file is read.
    hasher: Sha256,
    /// The top-level values but `consumers`.
    rest: Map<String, Value>,
    /// The consumers that passed the schema.
    consumers: Vec<ConsumerSpec>,
    /// Consumers read.
    count: usize,
    seen_consumers: bool,
    /// The file must be read whole.
    whole: bool,
    errors: Vec<PolicyError>,
}

impl State<'_> {
    /// This file must be read whole: stop reading (the error is not
    /// reported; [`read`] sees `whole`).
    fn read_whole<E: de::Error>(&mut self) -> E {
        self.whole = true;
        E::custom("read the file whole")
    }

    /// `consumers` begins: the canonical form up to its first item.
    fn begin_consumers(&mut self) {
        self.seen_consumers = true;
        let h = &mut self.hasher;
        h.update(self.path.as_bytes());
        h.update([0]);
        h.update(b"{");
        // Keys sorted before `consumers` seen so far, in order.
        for (k, v) in sorted(&self.rest).filter(|(k, _)| k.as_str() < "consumers") {
            h.update(serde_json::to_vec(k).unwrap_or_default());
            h.update(b":");
            h.update(canonical_json(v));
            h.update(b",");
        }
        h.update(b"\"consumers\":[");
    }

    /// One consumer, as parsed.
    fn consumer(&mut self, item: Value) {
        let i = self.count;
        self.count += 1;
        if i > 0 {
            self.hasher.update(b",");
        }
        self.hasher.update(canonical_json(&item));
        let before = self.errors.len();
        for err in consumer_validator().iter_errors(&item) {
            self.errors.push(PolicyError::new(
                self.path,
                format!("/consumers/{i}{}", err.instance_path()),
                err.to_string(),
            ));
        }
        if self.errors.len() > before {
            return;
        }
        match serde_json::from_value::<ConsumerSpec>(item) {
            Ok(c) => self.consumers.push(c),
            Err(e) => self.errors.push(PolicyError::new(
                self.path,
                format!("/consumers/{i}"),
                e.to_string(),
            )),
        }
    }
}

/// A scalar where a map or a list was expected is handled as a unit: the
/// file is read whole, which reports it.
macro_rules! scalars_are_units {
    () => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            self.visit_unit()
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            self.visit_unit()
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            self.visit_unit()
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            self.visit_unit()
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            self.visit_unit()
        }
    };
}

/// The file: a map whose `consumers` is read item by item.
struct FileSeed<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for FileSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a policy file (a map)")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        let state = self.0;
        while let Some(key) = map.next_key::<String>()? {
            if key == "consumers" {
                if state.seen_consumers {
                    return Err(state.read_whole());
                }
                state.begin_consumers();
                map.next_value_seed(ConsumersSeed(state))?;
            } else {
                // A key sorted before `consumers` after it: its canonical
                // place is already written.
                if state.seen_consumers && key.as_str() < "consumers" {
                    return Err(state.read_whole());
                }
                let v: Value = map.next_value()?;
                state.rest.insert(key, v);
            }
        }
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // An empty document, or not a map: the whole reading says what.
        Err(self.0.read_whole())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_seq<S: SeqAccess<'de>>(self, _: S) -> Result<(), S::Error> {
        Err(self.0.read_whole())
    }
    scalars_are_units!();
}

/// `consumers`: a list read one item at a time.
struct ConsumersSeed<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for ConsumersSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ConsumersSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of consumers")
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        let state = self.0;
        while let Some(item) = seq.next_element::<Value>()? {
            state.consumer(item);
        }
        state.hasher.update(b"]");
        Ok(())
    }
    fn visit_map<M: MapAccess<'de>>(self, _: M) -> Result<(), M::Error> {
        Err(self.0.read_whole())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.0.read_whole())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    scalars_are_units!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reading's digest and the consumers' ids (or the sorted errors).
    type Reading = ([u8; 32], Result<Vec<String>, Vec<String>>);

    /// What reading the whole file gives.
    fn whole(src: &SourceFile) -> Reading {
        let mut h = Sha256::new();
        h.update(b"before");
        let got = match super::super::read_policy_file(src) {
            Ok(s) => {
                h.update(src.path.as_bytes());
                h.update([0]);
                h.update(&s.canonical);
                h.update([0]);
                Ok(s.file.consumers.iter().map(|c| c.id.clone()).collect())
            }
            Err(e) => Err(sorted(e)),
        };
        (h.finalize().into(), got)
    }

    /// The same, read one consumer at a time; `None`: read whole.
    fn streamed(src: &SourceFile) -> Option<Reading> {
        let mut h = Sha256::new();
        h.update(b"before");
        let got = match read(src, &mut h) {
            Read::File(f) => Ok(f.consumers.iter().map(|c| c.id.clone()).collect()),
            Read::Errors(e) => Err(sorted(e)),
            Read::Whole => return None,
        };
        Some((h.finalize().into(), got))
    }

    fn sorted(errors: Vec<PolicyError>) -> Vec<String> {
        let mut v: Vec<String> = errors.iter().map(ToString::to_string).collect();
        v.sort();
        v
    }

    fn file(path: &str, text: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            text: text.into(),
        }
    }

    const HASH: &str = "sha256:9c87711a24e85628380fe628543662cdfa91acfb8983855846da4753fec501fc";

    fn consumer_json(id: &str, name: &str) -> String {
        format!(
            "{{\"id\": {}, \"name\": {}, \"plan\": \"gold\", \"apps\": [\"a\", \"b\"], \"keys\": [{{\"hash\": \"{HASH}\", \"label\": \"x\"}}]}}",
            serde_json::to_string(id).expect("json"),
            serde_json::to_string(name).expect("json")
        )
    }

    #[test]
    fn the_digest_and_the_consumers_are_those_of_reading_the_whole_file() {
        let names = [
            "plain",
            "with \"quotes\" and \\\\",
            "ünïcödé ✓",
            "tab\there",
            "e\u{301}",
        ];
        let list: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| consumer_json(&format!("c{i}"), n))
            .collect();
        let list = list.join(", ");
        let plans = "[{\"name\": \"gold\", \"limits\": [{\"name\": \"s\", \"rate\": \"5/s\", \"burst\": 10}]}]";
        let app = "[{\"name\": \"a\", \"owner\": \"o\", \"hosts\": [\"a.test\"], \"passthrough\": true, \"upstream\": {\"instances\": [\"http://127.0.0.1:1\"]}, \"resilience\": {\"breaker\": {\"failure_ratio\": 0.25}}}]";
        let read_whole_only = [
            // `apps` (sorted before `consumers`) after it.
            format!("{{\"version\": 1, \"consumers\": [{list}], \"apps\": {app}}}"),
            // `consumers` twice, or not a list.
            format!("{{\"version\": 1, \"consumers\": [], \"consumers\": [{list}]}}"),
            "{\"version\": 1, \"consumers\": {\"a\": 1}}".to_string(),
            "[1, 2]".to_string(),
        ];
        let streamed_files = [
            format!("{{\"version\": 1, \"plans\": {plans}, \"consumers\": [{list}]}}"),
            format!("{{\"consumers\": [{list}], \"version\": 1, \"plans\": {plans}}}"),
            format!("{{\"apps\": {app}, \"consumers\": [{list}], \"version\": 1}}"),
            "{\"version\": 1, \"consumers\": []}".to_string(),
            // Errors: a consumer the schema refuses, an unknown key.
            format!(
                "{{\"version\": 1, \"consumers\": [{list}, {{\"id\": \"bad id!\", \"name\": 3}}]}}"
            ),
            format!("{{\"version\": 1, \"nope\": true, \"consumers\": [{list}]}}"),
            // A syntax error inside the list.
            format!("{{\"version\": 1, \"consumers\": [{list}, {{\"id\": }}]}}"),
        ];
        for text in &streamed_files {
            for (path, text) in [("c.json", text.clone()), ("c.yaml", text.clone())] {
                let src = file(path, &text);
                let got = streamed(&src).unwrap_or_else(|| panic!("read one at a time: {text}"));
                assert_eq!(got, whole(&src), "{path}: {text}");
            }
        }
        for text in &read_whole_only {
            assert!(streamed(&file("c.json", text)).is_none(), "{text}");
        }
        // A YAML file of comments only has no document: read whole.
        assert!(streamed(&file("c.yaml", "# nothing here\n")).is_none());
        // YAML written as YAML, with the keys in another order.
        let yaml = format!(
            "consumers:\n  - {{ id: y1, name: \"Ÿ \\\"one\\\"\", plan: gold, keys: [{{ hash: \"{HASH}\" }}] }}\n  - id: y2\n    name: two\n    apps: ['*']\nversion: 1\nplans:\n  - {{ name: gold, quotas: [{{ name: d, limit: 5, window: day }}] }}\n"
        );
        let src = file("y.yaml", &yaml);
        let got = streamed(&src).expect("read one at a time");
        assert_eq!(got, whole(&src));
        assert_eq!(got.1, Ok(vec!["y1".to_string(), "y2".to_string()]));
    }
}
