//! Parsing of `submit --file` input: one JSON job object a line.

use crate::NewJob;

/// Parses one [`NewJob`] per non-blank line, validating each.
///
/// On failure, returns one message per bad line — every one, not just the first — as
/// `line N: what is wrong` (JSON syntax errors and misplaced values with their column,
/// unknown fields, wrong types, failed validation). Blank lines are skipped.
pub fn parse_jobs_jsonl(text: &str) -> Result<Vec<NewJob>, Vec<String>> {
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let n = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = supervisor_config::parse_strict_json(line)
            .map_err(|e| syntax(&e))
            .and_then(job_from_value);
        match parsed {
            Ok(job) => match job.validate() {
                Ok(()) => jobs.push(job),
                Err(what) => errors.push(format!("line {n}: {what}")),
            },
            Err(e) => errors.push(format!("line {n}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        Err(errors)
    }
}

/// Parses the body of an HTTP submit: one JSON job object, or an array of them (at most
/// `max_jobs`), validating each. On failure, returns one message per bad job (`job N:
/// what is wrong`, N from 1), or one for the whole body.
pub fn parse_jobs_json(body: &[u8], max_jobs: usize) -> Result<Vec<NewJob>, Vec<String>> {
    let value = match std::str::from_utf8(body)
        .map_err(|e| format!("the body is not UTF-8: {e}"))
        .and_then(|text| {
            supervisor_config::parse_strict_json(text).map_err(|e| {
                format!(
                    "invalid JSON: {} (line {}, column {})",
                    e.message, e.line, e.column
                )
            })
        }) {
        Ok(v) => v,
        Err(e) => return Err(vec![e]),
    };
    let (items, single) = match value {
        serde_json::Value::Array(items) => (items, false),
        object @ serde_json::Value::Object(_) => (vec![object], true),
        _ => return Err(vec!["expected a job object or an array of them".into()]),
    };
    if items.is_empty() {
        return Err(vec!["no jobs in the array".into()]);
    }
    if items.len() > max_jobs {
        return Err(vec![format!(
            "{} jobs in one request; at most {max_jobs}",
            items.len()
        )]);
    }
    let mut jobs = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let which = if single {
            "job".to_string()
        } else {
            format!("job {}", index + 1)
        };
        match job_from_value(item) {
            Ok(job) => match job.validate() {
                Ok(()) => jobs.push(job),
                Err(what) => errors.push(format!("{which}: {what}")),
            },
            Err(e) => errors.push(format!("{which}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        Err(errors)
    }
}

/// A job from one JSON value, read with duplicate keys refused: it must be an object
/// (serde would take an array for the fields in order, and `[["make"], "x86"]` is no
/// job anyone meant to write). The error names the field it is in, if any.
fn job_from_value(value: serde_json::Value) -> Result<NewJob, String> {
    if !value.is_object() {
        return Err(format!(
            "expected a job object ({{\"command\": [...], ...}}), got {}",
            kind(&value)
        ));
    }
    serde_path_to_error::deserialize::<_, NewJob>(value).map_err(|e| {
        match e.path().to_string().as_str() {
            "." => e.inner().to_string(),
            path => format!("{path}: {}", e.inner()),
        }
    })
}

/// What a JSON value is, in words.
fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A syntax error of one line, in words: where it is, and whether the line ended early.
fn syntax(e: &supervisor_config::JsonSyntaxError) -> String {
    let how = if e.message.starts_with("EOF") {
        "incomplete"
    } else {
        "invalid"
    };
    format!("{how} JSON at column {}: {}", e.column, e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_is_one_job_or_an_array_every_bad_one_named() {
        let one = parse_jobs_json(br#"{"command": ["true"], "group": "g"}"#, 10).unwrap();
        assert_eq!(one[0].group.as_deref(), Some("g"));
        let two = parse_jobs_json(br#"[{"command": ["a"]}, {"command": ["b"]}]"#, 10).unwrap();
        assert_eq!(two.len(), 2);
        let bad = parse_jobs_json(
            br#"[{"command": ["a"]}, {"command": []}, {"command": ["c"], "x": 1}]"#,
            10,
        )
        .unwrap_err();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].starts_with("job 2: "), "{bad:?}");
        assert!(
            bad[1].starts_with("job 3: ") && bad[1].contains("`x`"),
            "{bad:?}"
        );
        for body in [
            &b"[]"[..],
            b"17",
            b"\"x\"",
            b"{",
            b"",
            b"{\"command\": [\"a\"], \"command\": [\"b\"]}",
        ] {
            assert_eq!(parse_jobs_json(body, 10).unwrap_err().len(), 1);
        }
        let nested = parse_jobs_json(br#"[{"command": ["a"]}, [["b"], "g"]]"#, 10).unwrap_err();
        assert!(
            nested[0].starts_with("job 2: expected a job object"),
            "{nested:?}"
        );
        let many = format!("[{}]", [r#"{"command": ["a"]}"#; 11].join(","));
        assert!(parse_jobs_json(many.as_bytes(), 10).unwrap_err()[0].contains("at most 10"));
        let deep = "[".repeat(100_000);
        assert!(parse_jobs_json(deep.as_bytes(), 10).is_err());
    }

    #[test]
    fn good_lines_parse_and_blank_lines_are_skipped() {
        let text = concat!(
            r#"{"command": ["echo", "1"]}"#,
            "\n\n   \n",
            r#"{"command": ["b"], "group": "g", "tags": {"arch": "x86_64"}, "env": {"A": "1"},"#,
            r#" "cwd": "/tmp", "timeout_s": 2.5, "max_attempts": 3, "key": "k"}"#,
            "\r\n",
        );
        let jobs = parse_jobs_jsonl(text).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0], NewJob::new(["echo", "1"]));
        assert_eq!(jobs[1].group.as_deref(), Some("g"));
        assert_eq!(jobs[1].tags["arch"], "x86_64");
        assert_eq!(jobs[1].env["A"], "1");
        assert_eq!(jobs[1].timeout_s, Some(2.5));
        assert_eq!(jobs[1].max_attempts, Some(3));
        assert_eq!(jobs[1].key.as_deref(), Some("k"));
        assert_eq!(parse_jobs_jsonl("").unwrap(), vec![]);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = [
            r#"{"command": ["ok"]}"#,                              // 1 fine
            r#"{"command": ["a"], "colour": "red"}"#,              // 2 unknown field
            r#"{"command": "echo"}"#,                              // 3 wrong type
            r#"{"command": ["a"],, }"#,                            // 4 syntax
            "",                                                    // 5 blank
            r#"{"command": []}"#,                                  // 6 validation
            r#"{"command": ["a"], "timeout_s": -1}"#,              // 7 validation
            r#"{"command": ["a"]"#,                                // 8 truncated
            r#"{"group": "g"}"#,                                   // 9 missing command
            r#"{"command": ["a"], "max_attempts": -2}"#,           // 10 wrong type (negative)
            r#"[["a"], "g"]"#,                                     // 11 not an object
            r#"{"command": ["a"], "tags": {"k": "1", "k": "2"}}"#, // 12 a key twice
            r#"{"command": ["a"], "command": ["b"]}"#,             // 13 a field twice
        ]
        .join("\n");
        let errors = parse_jobs_jsonl(&text).unwrap_err();
        let lines: Vec<&str> = errors
            .iter()
            .map(|e| e.split(':').next().unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                "line 2", "line 3", "line 4", "line 6", "line 7", "line 8", "line 9", "line 10",
                "line 11", "line 12", "line 13"
            ],
            "{errors:#?}"
        );
        assert!(
            errors[0].contains("unknown field `colour`"),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("invalid type"), "{}", errors[1]);
        assert!(
            errors[2].contains("invalid JSON at column 19"),
            "{}",
            errors[2]
        );
        assert!(
            errors[3].contains("command: must not be empty"),
            "{}",
            errors[3]
        );
        assert!(errors[4].contains("timeout_s"), "{}", errors[4]);
        assert!(errors[5].contains("incomplete JSON"), "{}", errors[5]);
        assert!(
            errors[6].contains("missing field `command`"),
            "{}",
            errors[6]
        );
        assert!(errors[7].contains("max_attempts"), "{}", errors[7]);
        assert!(errors[8].contains("expected a job object"), "{}", errors[8]);
        assert!(errors[9].contains("duplicate key \"k\""), "{}", errors[9]);
        assert!(
            errors[10].contains("duplicate key \"command\""),
            "{}",
            errors[10]
        );
        assert!(
            !errors.iter().any(|e| e.contains("at line 1")),
            "{errors:#?}"
        );
    }
}
