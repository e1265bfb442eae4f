//! The committed JSON Schema and example configs stay in step with the code.
//!
//! `schema/config.schema.json` must equal [`supervisor_config::json_schema`]; regenerate
//! it with `UPDATE_SCHEMA=1 cargo test -p supervisor-config --test schema`.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn committed_schema_is_up_to_date() {
    let path = repo_root().join("schema/config.schema.json");
    let schema = supervisor_config::json_schema();
    let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let committed_value: Option<Value> = serde_json::from_str(&committed).ok();
    assert!(
        committed_value.as_ref() == Some(&schema),
        "schema/config.schema.json ({}) is out of date with the config structs; regenerate it with\n    \
         UPDATE_SCHEMA=1 cargo test -p supervisor-config --test schema",
        path.display()
    );
}

#[test]
fn example_configs_are_valid() {
    for name in ["supervisor.json", "full.json"] {
        let path = repo_root().join("examples").join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        // As a supervisor running as root reads them (full.json runs jobs as a user).
        if let Err(e) = supervisor_config::parse_as(&text, &path, 0) {
            panic!("{e}");
        }
    }
}

/// The keys of `schema` that `value` leaves out, as key paths; for arrays, the keys no
/// element gives; for alternatives, those of the closest one.
fn missing_keys(root: &Value, schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => root.pointer(&r[1..]).unwrap(),
        None => schema,
    };
    if let Some(Value::Array(branches)) = schema.get("oneOf").or_else(|| schema.get("anyOf")) {
        return branches
            .iter()
            .map(|b| missing_keys(root, b, value, path))
            .min_by_key(Vec::len)
            .unwrap_or_default();
    }
    let mut missing = Vec::new();
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (key, item_schema) in properties {
            let item_path = format!("{path}.{key}");
            match value.get(key) {
                Some(item) => missing.extend(missing_keys(root, item_schema, item, &item_path)),
                None => missing.push(item_path),
            }
        }
    }
    if let (Some(items), Value::Array(elements)) = (schema.get("items"), value) {
        let per_element: Vec<Vec<String>> = elements
            .iter()
            .map(|e| missing_keys(root, items, e, &format!("{path}[]")))
            .collect();
        if let Some((first, rest)) = per_element.split_first() {
            missing.extend(
                first
                    .iter()
                    .filter(|k| rest.iter().all(|r| r.contains(k)))
                    .cloned(),
            );
        }
    }
    missing
}

#[test]
fn full_example_sets_every_key() {
    let path = repo_root().join("examples/full.json");
    let value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let schema = supervisor_config::json_schema();
    let missing = missing_keys(&schema, &schema, &value, "");
    assert!(missing.is_empty(), "examples/full.json lacks {missing:?}");
}
