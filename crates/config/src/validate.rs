//! Complete error collection: the parsed JSON is walked against the JSON Schema generated
//! from the typed structs (so the schema, the defaults and the checks cannot drift apart),
//! then the few rules a schema cannot say are checked (a backoff's `max_s` against its
//! `initial_s`, the heartbeat's timeout against its interval, unique group names, a
//! group's `group` only with its `user`).
//!
//! Every problem becomes a [`Problem`] with its key path (`groups[1].restart.max_s`); the
//! walk never stops at the first one.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::file;

/// One problem found in the config: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key path, like `groups[0].match.arch[2]`; empty for the whole document.
    pub path: String,
    /// What is wrong, like `expected a number, found a string`.
    pub message: String,
}

/// Every problem of `value` as a config file: those of the walk (keys in the order
/// serde_json keeps them), then those of the cross-key rules.
pub fn check(value: &Value, schema: &Value) -> Vec<Problem> {
    let mut walker = Walker {
        root: schema,
        problems: Vec::new(),
    };
    walker.check(schema, value, "");
    cross_checks(value, &mut walker.problems);
    walker.problems
}

/// The path of key `key` under `path`: `a.b`, or `a["odd key"]` for keys that are not
/// plain identifiers.
fn key_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::String(key.to_string())),
    }
}

/// The path of element `index` under `path`: `a[3]`.
fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// "expected A or B, found X": X is the number itself, or the kind of other values.
fn mismatch(expected: &[String], value: &Value) -> String {
    let found = if value.is_number() {
        value.to_string()
    } else {
        kind(value).to_string()
    };
    format!("expected {}, found {found}", join(expected, "or"))
}

/// How a value of this kind is named in messages: `a string`, `an object`, ...
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How a JSON Schema type is named in messages.
fn type_name(name: &str) -> String {
    match name {
        "null" => "null".to_string(),
        "boolean" => "a boolean".to_string(),
        "number" => "a number".to_string(),
        "integer" => "an integer".to_string(),
        "string" => "a string".to_string(),
        "array" => "an array".to_string(),
        "object" => "an object".to_string(),
        other => other.to_string(),
    }
}

/// Whether `value` is of JSON Schema type `name`.
fn is_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

/// A bound for messages: integers without a fraction, others as written.
fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// A bound from the schema for messages (`1000000000`, not `1000000000.0`).
fn number_text(bound: &Value) -> String {
    match bound {
        Value::Number(n) if n.is_f64() => n.as_f64().map(number).unwrap_or_default(),
        other => other.to_string(),
    }
}

/// `a, b and c` / `a or b`.
fn join(items: &[String], last: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., tail] => format!("{} {last} {tail}", init.join(", ")),
    }
}

struct Walker<'a> {
    /// The whole schema, for `$ref`.
    root: &'a Value,
    problems: Vec<Problem>,
}

impl<'a> Walker<'a> {
    fn report(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// The schema `$ref` points to, or `schema` itself.
    fn resolve(&self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => reference
                .strip_prefix('#')
                .and_then(|pointer| self.root.pointer(pointer))
                .map(|target| self.resolve(target))
                .unwrap_or(schema),
            None => schema,
        }
    }

    /// The JSON types `schema` admits; `None` when it does not say.
    fn types(&self, schema: &'a Value) -> Option<Vec<&'a str>> {
        let schema = self.resolve(schema);
        match schema.get("type") {
            Some(Value::String(one)) => Some(vec![one.as_str()]),
            Some(Value::Array(many)) => Some(many.iter().filter_map(Value::as_str).collect()),
            _ => {
                let branches = schema
                    .get("anyOf")
                    .or_else(|| schema.get("oneOf"))
                    .and_then(Value::as_array)?;
                let mut all = Vec::new();
                for branch in branches {
                    for t in self.types(branch)? {
                        if !all.contains(&t) {
                            all.push(t);
                        }
                    }
                }
                Some(all)
            }
        }
    }

    fn check(&mut self, schema: &'a Value, value: &Value, path: &str) {
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => return self.report(path, "not allowed here"),
            Value::Object(_) if schema.get("$ref").is_some() => self.resolve(schema),
            Value::Object(_) => schema,
            _ => return,
        };
        if let Some(types) = self.types_of_this(schema) {
            if !types.iter().any(|t| is_type(value, t)) {
                let expected: Vec<String> = types.iter().map(|t| type_name(t)).collect();
                return self.report(path, mismatch(&expected, value));
            }
        }
        if let Some(expected) = schema.get("const") {
            if value != expected {
                return self.report(path, format!("expected {expected}, found {value}"));
            }
        }
        if let Some(Value::Array(options)) = schema.get("enum") {
            if !options.contains(value) {
                return self.report(path, one_of_message(options.iter(), value));
            }
        }
        if let Some(Value::Array(branches)) = schema.get("anyOf").or_else(|| schema.get("oneOf")) {
            return self.check_branches(branches, value, path);
        }
        match value {
            Value::Number(_) => self.check_number(schema, value, path),
            Value::String(s) => {
                if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                    if (s.chars().count() as u64) < min {
                        let message = if min == 1 {
                            "must not be empty".to_string()
                        } else {
                            format!("must be at least {min} characters long")
                        };
                        self.report(path, message);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                    if (items.len() as u64) < min {
                        let message = if min == 1 {
                            "must not be empty".to_string()
                        } else {
                            format!("must have at least {min} entries, found {}", items.len())
                        };
                        self.report(path, message);
                    }
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item_schema, item, &index_path(path, i));
                    }
                }
            }
            Value::Object(object) => self.check_object(schema, object, path),
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// The `type` keyword of this very schema (not of its branches).
    fn types_of_this(&self, schema: &'a Value) -> Option<Vec<&'a str>> {
        match schema.get("type") {
            Some(Value::String(one)) => Some(vec![one.as_str()]),
            Some(Value::Array(many)) => Some(many.iter().filter_map(Value::as_str).collect()),
            _ => None,
        }
    }

    fn check_number(&mut self, schema: &Value, value: &Value, path: &str) {
        let Some(x) = value.as_f64() else { return };
        let bound = |key: &str| {
            schema
                .get(key)
                .and_then(|b| Some((b.as_f64()?, number_text(b))))
        };
        let lower = bound("exclusiveMinimum")
            .map(|b| (b, true))
            .or_else(|| bound("minimum").map(|b| (b, false)));
        let upper = bound("exclusiveMaximum")
            .map(|b| (b, true))
            .or_else(|| bound("maximum").map(|b| (b, false)));
        // The integer formats bound what fits; named only when exceeded.
        let implied = match schema.get("format").and_then(Value::as_str) {
            Some("uint32") => Some((f64::from(u32::MAX), u32::MAX.to_string())),
            Some("uint64") => Some((u64::MAX as f64, u64::MAX.to_string())),
            _ => None,
        };
        let below = lower
            .as_ref()
            .is_some_and(|((m, _), exclusive)| if *exclusive { x <= *m } else { x < *m });
        let above = upper
            .as_ref()
            .is_some_and(|((m, _), exclusive)| if *exclusive { x >= *m } else { x > *m });
        let beyond_format = upper.is_none() && implied.as_ref().is_some_and(|(m, _)| x > *m);
        if !(below || above || beyond_format) {
            return;
        }
        let mut bounds = Vec::new();
        if let Some(((_, text), exclusive)) = lower {
            bounds.push(format!("{} {text}", if exclusive { ">" } else { ">=" }));
        }
        if let Some(((_, text), exclusive)) = upper {
            bounds.push(format!("{} {text}", if exclusive { "<" } else { "<=" }));
        } else if let (true, Some((_, text))) = (beyond_format, implied) {
            bounds.push(format!("<= {text}"));
        }
        self.report(
            path,
            format!("must be {}, found {value}", bounds.join(" and ")),
        );
    }

    fn check_object(&mut self, schema: &'a Value, object: &Map<String, Value>, path: &str) {
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (key, item) in object {
            let item_path = key_path(path, key);
            if let Some(item_schema) = properties.and_then(|p| p.get(key)) {
                self.check(item_schema, item, &item_path);
            } else {
                match additional {
                    Some(Value::Bool(false)) => {
                        let mut known: Vec<&str> = properties
                            .into_iter()
                            .flat_map(|p| p.keys().map(String::as_str))
                            .collect();
                        known.sort_unstable();
                        self.report(
                            &item_path,
                            format!("unknown key (expected one of: {})", known.join(", ")),
                        );
                    }
                    Some(item_schema) => self.check(item_schema, item, &item_path),
                    None => {}
                }
            }
        }
        if let Some(Value::Array(required)) = schema.get("required") {
            for key in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(key) {
                    self.report(&key_path(path, key), "required");
                }
            }
        }
    }

    fn check_branches(&mut self, branches: &'a [Value], value: &Value, path: &str) {
        let resolved: Vec<&'a Value> = branches.iter().map(|b| self.resolve(b)).collect();

        // Unit enum variants with doc comments: `oneOf: [{const: "a"}, {const: "b"}]`.
        let consts: Option<Vec<&Value>> = resolved.iter().map(|b| b.get("const")).collect();
        if let Some(consts) = consts {
            if !consts.contains(&value) {
                self.report(path, one_of_message(consts.into_iter(), value));
            }
            return;
        }

        // Externally tagged enums: `oneOf: [{sqlite: {...}}, {postgres: {...}}]`, each
        // an object with exactly one (required) key naming the variant.
        if let (Some(tags), Value::Object(object)) = (tagged_variants(&resolved), value) {
            let mut names: Vec<&str> = tags.keys().copied().collect();
            names.sort_unstable();
            let names = names.join(", ");
            let mut given = Vec::new();
            for (key, item) in object {
                match tags.get(key.as_str()) {
                    Some(item_schema) => {
                        given.push(key.as_str());
                        self.check(item_schema, item, &key_path(path, key));
                    }
                    None => self.report(
                        &key_path(path, key),
                        format!("unknown key (expected one of: {names})"),
                    ),
                }
            }
            given.sort_unstable();
            match given.len() {
                0 if object.is_empty() => {
                    self.report(
                        path,
                        format!("expected exactly one of: {names}; found none"),
                    );
                }
                0 | 1 => {}
                _ => self.report(
                    path,
                    format!(
                        "expected exactly one of: {names}; found {}",
                        given.join(" and ")
                    ),
                ),
            }
            return;
        }

        // Anything else: the branches whose type admits the value; the first that fits
        // wins, else the problems of the first candidate are reported.
        let candidates: Vec<&'a Value> = resolved
            .iter()
            .copied()
            .filter(|b| match self.types(b) {
                Some(types) => types.iter().any(|t| is_type(value, t)),
                None => true,
            })
            .collect();
        if candidates.is_empty() {
            let mut expected: Vec<String> = Vec::new();
            for branch in &resolved {
                for t in self.types(branch).unwrap_or_default() {
                    let name = type_name(t);
                    if !expected.contains(&name) {
                        expected.push(name);
                    }
                }
            }
            return self.report(path, mismatch(&expected, value));
        }
        let mut first_problems = None;
        for candidate in candidates {
            let before = self.problems.len();
            self.check(candidate, value, path);
            if self.problems.len() == before {
                return;
            }
            let problems = self.problems.split_off(before);
            first_problems.get_or_insert(problems);
        }
        self.problems.extend(first_problems.unwrap_or_default());
    }
}

/// `expected one of "exit", "disable", found "x"`.
fn one_of_message<'v>(options: impl Iterator<Item = &'v Value>, value: &Value) -> String {
    let options: Vec<String> = options.map(Value::to_string).collect();
    format!("expected one of {}, found {value}", options.join(", "))
}

/// If every branch is an object with exactly one key, required and nothing else allowed
/// (serde's externally tagged enum), the variants by tag.
fn tagged_variants<'a>(branches: &[&'a Value]) -> Option<BTreeMap<&'a str, &'a Value>> {
    let mut tags = BTreeMap::new();
    for branch in branches {
        let properties = branch.get("properties")?.as_object()?;
        if properties.len() != 1 || branch.get("additionalProperties") != Some(&Value::Bool(false))
        {
            return None;
        }
        let (tag, schema) = properties.iter().next()?;
        tags.insert(tag.as_str(), schema);
    }
    Some(tags)
}

/// The longest group name, in characters (a submitted job's `group` too).
const MAX_GROUP_NAME: usize = supervisor_core::bounds::MAX_GROUP_NAME;

/// No text of the config holds a NUL: no path, name or value can (the system calls
/// that take them end at the first one, so `"st\u0000ate"` would name another path
/// than the one written).
fn no_nul(value: &Value, path: &str, problems: &mut Vec<Problem>) {
    match value {
        Value::String(text) if text.contains('\0') => problems.push(Problem {
            path: path.to_string(),
            message: "must not contain a NUL character (\\u0000)".into(),
        }),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                no_nul(item, &index_path(path, i), problems);
            }
        }
        Value::Object(object) => {
            for (key, item) in object {
                let item_path = key_path(path, key);
                if key.contains('\0') {
                    problems.push(Problem {
                        path: item_path.clone(),
                        message: "a key must not contain a NUL character (\\u0000)".into(),
                    });
                }
                no_nul(item, &item_path, problems);
            }
        }
        _ => {}
    }
}

/// The rules across keys, on whatever parts of the document have the right types (the
/// walk has already reported the others).
fn cross_checks(value: &Value, problems: &mut Vec<Problem>) {
    no_nul(value, "", problems);
    let Some(root) = value.as_object() else {
        return;
    };

    // A group's name shows in tables, events and the workers' command lines: printable,
    // and short enough for them.
    if let Some(Value::Array(groups)) = root.get("groups") {
        for (i, group) in groups.iter().enumerate() {
            let Some(Value::String(name)) = group.get("name") else {
                continue;
            };
            let path = format!("groups[{i}].name");
            if name.chars().any(|c| c.is_control() && c != '\0') {
                problems.push(Problem {
                    path: path.clone(),
                    message: format!("must not contain control characters, found {name:?}"),
                });
            }
            if name.chars().count() > MAX_GROUP_NAME {
                problems.push(Problem {
                    path,
                    message: format!(
                        "at most {MAX_GROUP_NAME} characters, found {}",
                        name.chars().count()
                    ),
                });
            }
        }
    }

    let backoff = |obj: Option<&Value>, path: &str, initial: f64, max: f64, out: &mut Vec<_>| {
        ordered(
            obj,
            path,
            ("initial_s", initial),
            ("max_s", max),
            false,
            out,
        );
    };

    if let Some(Value::Object(inst)) = root.get("instances") {
        let num = |k: &str, default: f64| match inst.get(k) {
            None => Some(default),
            Some(v) => v.as_f64(),
        };
        let defaults = file::Instances::default();
        if let (Some(touch), Some(dead)) = (
            num("touch_every_s", defaults.touch_every_s),
            num("dead_after_s", defaults.dead_after_s),
        ) {
            let least = 2.0 * touch + file::MAX_CLOCK_SKEW_S;
            if touch > 0.0 && dead < least {
                problems.push(Problem {
                    path: "instances.dead_after_s".into(),
                    message: format!(
                        "must be at least 2 × touch_every_s + {} ({}): a supervisor fences \
                         itself after dead_after_s - touch_every_s - {} s without a touch, \
                         and needs one touch in that time; found {}",
                        file::MAX_CLOCK_SKEW_S,
                        number(least),
                        file::MAX_CLOCK_SKEW_S,
                        number(dead)
                    ),
                });
            }
        }
    }

    if let Some(Value::Object(retention)) = root.get("retention") {
        let set = |k: &str| retention.get(k).is_some_and(|v| !v.is_null());
        if !set("finished_max_age_s") && !set("finished_max_count") {
            problems.push(Problem {
                path: "retention".into(),
                message: "set finished_max_age_s, finished_max_count or both \
                          (without a limit, leave retention out: nothing is deleted)"
                    .into(),
            });
        }
    }

    if let Some(Value::String(url)) = root
        .get("store")
        .and_then(|s| s.get("postgres"))
        .and_then(|p| p.get("url"))
    {
        if let Some(message) = crate::postgres_url::problem(url) {
            problems.push(Problem {
                path: "store.postgres.url".into(),
                message,
            });
        }
    }

    if let Some(Value::Object(http)) = root.get("http") {
        if let Some(Value::String(listen)) = http.get("listen") {
            match listen.parse::<std::net::SocketAddr>() {
                Err(_) => problems.push(Problem {
                    path: "http.listen".into(),
                    message: format!(
                        "{listen:?} is not an address and port (like 127.0.0.1:7070 or \
                         [::1]:7070; a name like localhost is not taken)"
                    ),
                }),
                Ok(addr) if !addr.ip().is_loopback() && http.get("token_file").is_none() => {
                    problems.push(Problem {
                        path: "http.token_file".into(),
                        message: format!(
                            "required when http.listen is not a loopback address ({listen}): \
                             without a token anyone who can reach it could read every job"
                        ),
                    })
                }
                Ok(_) => {}
            }
        }
    }

    let grabber = root.get("grabber");
    let error_backoff = file::ErrorBackoff::default();
    backoff(
        grabber.and_then(|g| g.get("error_backoff")),
        "grabber.error_backoff",
        error_backoff.initial_s,
        error_backoff.max_s,
        problems,
    );

    let heartbeat = file::Heartbeat::default();
    ordered(
        root.get("heartbeat"),
        "heartbeat",
        ("interval_s", heartbeat.interval_s),
        ("timeout_s", heartbeat.timeout_s),
        true,
        problems,
    );

    let Some(Value::Array(groups)) = root.get("groups") else {
        return;
    };
    let retry = file::RetryBackoff::default();
    let restart = file::RestartBackoff::default();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, group) in groups.iter().enumerate() {
        let path = index_path("groups", i);
        backoff(
            group.get("retry_backoff"),
            &format!("{path}.retry_backoff"),
            retry.initial_s,
            retry.max_s,
            problems,
        );
        backoff(
            group.get("restart").and_then(|r| r.get("backoff")),
            &format!("{path}.restart.backoff"),
            restart.initial_s,
            restart.max_s,
            problems,
        );
        if group.get("group").is_some() && group.get("user").is_none() {
            problems.push(Problem {
                path: format!("{path}.group"),
                message: "needs `user`: it is the primary group of the user jobs run as".into(),
            });
        }
        if let Some(Value::String(name)) = group.get("name") {
            if let Some(first) = seen.get(name.as_str()) {
                problems.push(Problem {
                    path: format!("{path}.name"),
                    message: format!(
                        "duplicate group name {} (also groups[{first}])",
                        Value::String(name.clone())
                    ),
                });
            } else {
                seen.insert(name, i);
            }
        }
    }
}

/// Checks that key `high` of `object` is at least (or, `strict`, more than) key `low`,
/// either one taking its default when absent; the problem is reported on the key that is
/// given (the higher one when both are).
fn ordered(
    object: Option<&Value>,
    path: &str,
    (low_key, low_default): (&str, f64),
    (high_key, high_default): (&str, f64),
    strict: bool,
    problems: &mut Vec<Problem>,
) {
    let Some(Value::Object(object)) = object else {
        return;
    };
    let read = |key: &str, default: f64| match object.get(key) {
        None => Some((default, false)),
        Some(v) => v.as_f64().map(|x| (x, true)),
    };
    let (Some((low, low_given)), Some((high, high_given))) =
        (read(low_key, low_default), read(high_key, high_default))
    else {
        return;
    };
    let fine = if strict { high > low } else { high >= low };
    if fine {
        return;
    }
    let relation = if strict { "more than" } else { "at least" };
    let (at, message) = if high_given {
        let default = if low_given { "" } else { ", its default" };
        (
            high_key,
            format!(
                "must be {relation} {low_key} ({}{default}), found {}",
                number(low),
                object[high_key]
            ),
        )
    } else {
        // Only the lower key is given (both defaults are in order).
        let relation = if strict { "less than" } else { "at most" };
        (
            low_key,
            format!(
                "must be {relation} {high_key} ({}, its default), found {}",
                number(high),
                object[low_key]
            ),
        )
    };
    problems.push(Problem {
        path: key_path(path, at),
        message,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_quote_odd_keys() {
        assert_eq!(key_path("", "groups"), "groups");
        assert_eq!(key_path("groups[0]", "match"), "groups[0].match");
        assert_eq!(key_path("m", "a b"), "m[\"a b\"]");
        assert_eq!(key_path("m", ""), "m[\"\"]");
        assert_eq!(index_path("groups", 2), "groups[2]");
    }

    #[test]
    fn numbers_in_messages_read_naturally() {
        assert_eq!(number(1e9), "1000000000");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(
            join(&["a".into(), "b".into(), "c".into()], "or"),
            "a, b or c"
        );
    }

    #[test]
    fn ordered_reports_on_the_given_key() {
        let mut problems = Vec::new();
        let obj = serde_json::json!({"initial_s": 50});
        ordered(
            Some(&obj),
            "x",
            ("initial_s", 1.0),
            ("max_s", 30.0),
            false,
            &mut problems,
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "x.initial_s");
        assert_eq!(
            problems[0].message,
            "must be at most max_s (30, its default), found 50"
        );
    }
}
