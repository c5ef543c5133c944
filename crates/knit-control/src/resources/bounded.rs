//! A YAML document read into a `serde_json::Value` with a budget of nodes, so that aliases
//! (`&a` ... `*a`) that expand a small file into a huge tree ("billion laughs") are refused as
//! an invalid document instead of exhausting memory. serde_yaml bounds alias jumps to 100 per
//! event, which still lets a few megabytes of aliases expand into gigabytes; this bounds the
//! expanded tree itself.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::{cell::Cell, fmt};

/// Nodes (scalars, sequences, mappings) one document may expand to: a thousand-route manifest
/// is far below it.
pub const MAX_NODES: usize = 1_000_000;

/// A document as a value, each node spending one of `budget`.
pub struct Bounded<'b> {
    pub budget: &'b Cell<usize>,
}

impl Bounded<'_> {
    fn spend<E: de::Error>(&self) -> Result<(), E> {
        match self.budget.get().checked_sub(1) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(E::custom(format!("the document expands to more than {MAX_NODES} values (YAML aliases?); refused"))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend()?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Bounded { budget: self.budget })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Bounded { budget: self.budget })? {
            let key = match key {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let value = map.next_value_seed(Bounded { budget: self.budget })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn read(text: &str) -> Result<Value, String> {
        let budget = Cell::new(MAX_NODES);
        let doc = serde_yaml::Deserializer::from_str(text).next().expect("a document");
        Bounded { budget: &budget }.deserialize(doc).map_err(|e| e.to_string())
    }

    #[test]
    fn documents_read_as_json_values() {
        let v = read("a: [1, two, {b: true}]\nc: ~\n").unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, "two", {"b": true}], "c": null}));
        assert_eq!(Value::deserialize(serde_yaml::Deserializer::from_str("x: 1")).unwrap(), serde_json::json!({"x": 1}));
    }

    #[test]
    fn aliases_that_expand_past_the_budget_are_refused() {
        // Nine levels of ten references: 10^9 values from 1 KiB.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        let e = read(&bomb).unwrap_err();
        assert!(e.contains("expands to more than") || e.contains("repetition limit"), "{e}");
    }
}
