//! A request body's JSON read as the API server reads it, or refused where the two
//! readings could differ.
//!
//! JSON allows an object to name a key twice; `serde_json` keeps the last value. The API
//! server decodes a body with Go's `encoding/json` rules (`sigs.k8s.io/json`), which
//! decode a repeated key into the same field again: a nested object is merged with the
//! first (its other fields kept), a map keeps the first one's entries beside the
//! second's. So `{"spec": {"hostPID": true, ...}, "spec": {"containers": [...]}}`
//! creates a Pod with both, where a last-wins reading shows the second alone. Nothing that writes JSON
//! repeats a key (the API server refuses it with `fieldValidation=Strict`, kubectl's
//! default): a body shown to a reviewer, or answered from, must name each key once.

use std::cell::RefCell;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the body is not valid JSON ({0})")]
    Syntax(serde_json::Error),
    #[error(
        "the body names the key {key:?} twice in one object{at}: the API server would \
         merge the two, so what it applies could not be shown as sent; send each key once"
    )]
    Repeated { key: String, at: String },
}

/// Parses `bytes` as one JSON value, refusing any object that names a key twice (and
/// saying where).
pub fn parse(bytes: &[u8]) -> Result<Value, Error> {
    let repeated = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = KeysOnce(&repeated)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (parsed, repeated.into_inner()) {
        (Ok(v), _) => Ok(v),
        (Err(e), Some(key)) => Err(Error::Repeated {
            key,
            at: format!(" (line {}, column {})", e.line(), e.column()),
        }),
        (Err(e), None) => Err(Error::Syntax(e)),
    }
}

/// Builds the value as `serde_json::Value` does, noting the first repeated key.
#[derive(Clone, Copy)]
struct KeysOnce<'a>(&'a RefCell<Option<String>>);

impl<'de> DeserializeSeed<'de> for KeysOnce<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeysOnce<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
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
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            match out.entry(key) {
                serde_json::map::Entry::Vacant(e) => {
                    e.insert(value);
                }
                serde_json::map::Entry::Occupied(e) => {
                    *self.0.borrow_mut() = Some(e.key().clone());
                    return Err(A::Error::custom("a key repeated"));
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_as_serde_json_does() {
        for text in [
            r#"{"a":1,"b":[true,null,-2,3.5,"x"],"c":{"d":{}},"e":18446744073709551615}"#,
            "[]",
            "\"s\"",
            " 7 ",
        ] {
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text.as_bytes()).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn a_key_named_twice_in_one_object_is_refused() {
        for (text, key, at) in [
            (r#"{"spec":{"a":1},"spec":{"b":2}}"#, "spec", "column 31"),
            (r#"{"x":[{"k":1,"k":1}]}"#, "k", "column 19"),
            // Escapes name the same key.
            (
                r#"{"metadata":{},"m\u0065tadata":{}}"#,
                "metadata",
                "column 34",
            ),
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            let Error::Repeated { key: k, .. } = &e else {
                panic!("{e}")
            };
            assert_eq!(k, key);
            let shown = e.to_string();
            assert!(shown.contains(at), "{shown}");
        }
        // Keys differ by case: two keys (the API server's decoder is case-sensitive).
        assert!(parse(br#"{"spec":1,"Spec":2}"#).is_ok());
        // The same key in different objects is fine.
        assert!(parse(br#"{"a":{"k":1},"b":{"k":1}}"#).is_ok());
    }

    /// Any JSON value (objects with distinct keys), written as serde_json writes it.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z\"\\\\é\u{1}]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-c\"]{0,2}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every object in `v` written with the key of its `which`-th entry repeated (its
    /// second copy's value null); `None` if `v` holds no object with an entry.
    fn with_a_key_twice(v: &Value, which: &mut usize) -> String {
        match v {
            Value::Object(m) => {
                let mut parts: Vec<String> = Vec::new();
                for (k, inner) in m {
                    let key = serde_json::to_string(k).unwrap();
                    parts.push(format!("{key}:{}", with_a_key_twice(inner, which)));
                    if *which == 0 {
                        parts.push(format!("{key}:null"));
                    }
                    *which = which.wrapping_sub(1);
                }
                format!("{{{}}}", parts.join(","))
            }
            Value::Array(a) => format!(
                "[{}]",
                a.iter()
                    .map(|i| with_a_key_twice(i, which))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            other => other.to_string(),
        }
    }

    use proptest::prelude::*;

    proptest! {
        // `PROPTEST_CASES=N` deepens a run, as for the suites under tests/.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .map_or(512, |n| n.parse().expect("PROPTEST_CASES is a number")),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_json_reads_as_serde_json_reads_it(v in value()) {
            let text = serde_json::to_vec(&v).unwrap();
            let want: Value = serde_json::from_slice(&text).unwrap();
            prop_assert_eq!(parse(&text).unwrap(), want);
        }

        #[test]
        fn any_key_repeated_anywhere_is_refused(v in value(), pick in any::<prop::sample::Index>()) {
            let entries = serde_json::to_string(&v).unwrap().matches("\":").count();
            let mut which = pick.index(entries.max(1));
            let text = with_a_key_twice(&v, &mut which);
            // Past zero (wrapped) once an entry was repeated; else fewer entries than
            // counted (a string holding `":`), or none.
            let repeated = which > entries;
            match parse(text.as_bytes()) {
                Ok(read) => prop_assert!(
                    !repeated && read == serde_json::from_str::<Value>(&text).unwrap(),
                    "{text} read as {read}"
                ),
                Err(e) => prop_assert!(repeated && matches!(e, Error::Repeated { .. }), "{text}: {e}"),
            }
        }
    }

    #[test]
    fn text_that_is_not_json_is_a_syntax_error() {
        for text in ["{not json", "{\"a\":1} trailing", "", "\"\\ud800\""] {
            assert!(
                matches!(parse(text.as_bytes()), Err(Error::Syntax(_))),
                "{text}"
            );
        }
    }
}
