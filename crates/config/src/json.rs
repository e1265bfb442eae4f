//! Reading the config text into a [`serde_json::Value`], stricter than serde_json's own
//! reader: a key given twice in one object is an error at its line and column (serde_json
//! would silently keep the last one, hiding the first from the operator).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A JSON syntax problem: 1-based line and column, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column within the line, counted in bytes; an error at the start of a line
    /// (the text ends right after a newline) is at column 1.
    pub column: usize,
    /// serde_json's message without its ` at line L column C` suffix.
    pub message: String,
}

/// Parses `text` as one JSON document, rejecting duplicate keys.
pub fn parse(text: &str) -> Result<Value, SyntaxError> {
    serde_json::from_str::<Strict>(text)
        .map(|strict| strict.0)
        .map_err(|e| {
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
            SyntaxError {
                line: e.line(),
                // serde_json says column 0 when the error comes before the first byte of
                // a line (the text ended after a newline, or is empty).
                column: e.column().max(1),
                message,
            }
        })
}

/// `bytes` as UTF-8 text, or where the first byte that is not UTF-8 stands (1-based
/// line and column, the column counted in bytes as [`parse`] counts it).
pub fn utf8(bytes: &[u8]) -> Result<&str, SyntaxError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let before = &bytes[..at];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |newline| newline + 1);
        let message = match bytes.get(at) {
            Some(byte) if e.error_len().is_some() => format!("invalid UTF-8 (byte 0x{byte:02x})"),
            _ => "invalid UTF-8 (the text ends inside a character)".to_string(),
        };
        SyntaxError {
            line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
            column: at - line_start + 1,
            message,
        }
    })
}

/// The top-level keys of a JSON object that read before its first error, each with its
/// value (a value with an error inside is not among them): what can still be learned
/// from a half-edited file. Empty when `text` does not even begin an object.
pub fn salvage_object(text: &str) -> Map<String, Value> {
    let found = std::cell::RefCell::new(Map::new());
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = de::DeserializeSeed::deserialize(Salvage(&found), &mut de);
    found.into_inner()
}

/// The seed (and visitor) of [`salvage_object`]: keeps each entry as soon as it is read.
struct Salvage<'a>(&'a std::cell::RefCell<Map<String, Value>>);

impl<'de> de::DeserializeSeed<'de> for Salvage<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Salvage<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            // A key given twice is an error of the file: the first reading stays.
            self.0.borrow_mut().entry(key).or_insert(value);
        }
        Ok(())
    }
}

/// A [`Value`] read with duplicate keys refused.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {}",
                    Value::String(key)
                )));
            }
            let Strict(item) = map.next_value()?;
            object.insert(key, item);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ordinary_json() {
        let v = parse(r#"{"a": [1, -2, 2.5, "x", null, true], "b": {}}"#).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": [1, -2, 2.5, "x", null, true], "b": {}})
        );
        assert!(v["a"][0].is_u64());
        assert!(v["a"][1].is_i64());
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let e = parse("{\n  \"a\": 1,\n  \"b\": ]\n}").unwrap_err();
        assert_eq!((e.line, e.column), (3, 8));
        assert_eq!(e.message, "expected value");
    }

    #[test]
    fn an_error_at_the_start_of_a_line_is_at_column_1() {
        let e = parse("").unwrap_err();
        assert_eq!((e.line, e.column), (1, 1));
        assert_eq!(e.message, "EOF while parsing a value");
        let e = parse("{\"a\": 1,\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 1));
        let e = parse("[1,\n\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 1));
    }

    #[test]
    fn text_that_is_not_utf8_is_refused_at_its_first_bad_byte() {
        assert_eq!(utf8(b"{\"a\": \"\xc3\xa9\"}"), Ok("{\"a\": \"\u{e9}\"}"));
        let e = utf8(b"\xff").unwrap_err();
        assert_eq!((e.line, e.column), (1, 1));
        assert_eq!(e.message, "invalid UTF-8 (byte 0xff)");
        // Columns count bytes, as serde_json's do: `é` takes two.
        let e = utf8(b"{\n  \"\xc3\xa9\": \"x\x80\"\n}").unwrap_err();
        assert_eq!((e.line, e.column), (2, 11));
        assert_eq!(e.message, "invalid UTF-8 (byte 0x80)");
        let e = utf8(b"\n\n\"\xe2\x82").unwrap_err();
        assert_eq!((e.line, e.column), (3, 2));
        assert_eq!(
            e.message,
            "invalid UTF-8 (the text ends inside a character)"
        );
    }

    #[test]
    fn a_half_edited_object_gives_what_reads_before_its_first_error() {
        let text = "{\n  \"state_dir\": \"/srv/st\",\n  \"events\": {\"path\": \"e.jsonl\"},\n  \"groups\": [{\"name\": \"a\",}],\n  \"store\": {}\n}";
        assert!(parse(text).is_err());
        let found = salvage_object(text);
        assert_eq!(
            Value::Object(found),
            serde_json::json!({"state_dir": "/srv/st", "events": {"path": "e.jsonl"}})
        );
        assert!(salvage_object("[1, 2]").is_empty());
        assert!(salvage_object("").is_empty());
        assert_eq!(salvage_object(r#"{"a": 1, "a": 2"#)["a"], 1);
    }

    #[test]
    fn duplicate_keys_are_refused_where_they_stand() {
        let e = parse("{\n  \"a\": 1,\n  \"a\": 2\n}").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.message, "duplicate key \"a\"");
    }

    #[test]
    fn trailing_text_is_an_error() {
        let e = parse("{} x").unwrap_err();
        assert_eq!(e.line, 1);
        assert_eq!(e.message, "trailing characters");
    }
}
