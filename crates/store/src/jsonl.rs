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
        let mut de = serde_json::Deserializer::from_str(line);
        let parsed = serde_path_to_error::deserialize::<_, NewJob>(&mut de)
            .map_err(|e| with_path(&e))
            .and_then(|job| de.end().map(|()| job).map_err(|e| describe(&e)));
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
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Err(vec![format!(
                "{} (line {}, column {})",
                describe(&e),
                e.line(),
                e.column()
            )])
        }
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
        match serde_path_to_error::deserialize::<_, NewJob>(item) {
            Ok(job) => match job.validate() {
                Ok(()) => jobs.push(job),
                Err(what) => errors.push(format!("{which}: {what}")),
            },
            Err(e) => errors.push(match e.path().to_string().as_str() {
                "." => format!("{which}: {}", e.inner()),
                path => format!("{which}: {path}: {}", e.inner()),
            }),
        }
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        Err(errors)
    }
}

/// [`describe`], after the field the error is in, if it is in one.
fn with_path(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    match e.path().to_string().as_str() {
        "." => describe(e.inner()),
        path => format!("{path}: {}", describe(e.inner())),
    }
}

/// A serde_json error without its "at line 1 column C" suffix, with the column put back in
/// words.
fn describe(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let what = full.strip_suffix(&suffix).unwrap_or(&full);
    match e.classify() {
        serde_json::error::Category::Syntax => {
            format!("invalid JSON at column {}: {what}", e.column())
        }
        serde_json::error::Category::Eof => {
            format!("incomplete JSON at column {}: {what}", e.column())
        }
        serde_json::error::Category::Data => format!("{what} (column {})", e.column()),
        serde_json::error::Category::Io => what.to_owned(),
    }
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
        for body in [&b"[]"[..], b"17", b"\"x\"", b"{", b""] {
            assert_eq!(parse_jobs_json(body, 10).unwrap_err().len(), 1);
        }
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
            r#"{"command": ["ok"]}"#,                    // 1 fine
            r#"{"command": ["a"], "colour": "red"}"#,    // 2 unknown field
            r#"{"command": "echo"}"#,                    // 3 wrong type
            r#"{"command": ["a"],, }"#,                  // 4 syntax
            "",                                          // 5 blank
            r#"{"command": []}"#,                        // 6 validation
            r#"{"command": ["a"], "timeout_s": -1}"#,    // 7 validation
            r#"{"command": ["a"]"#,                      // 8 truncated
            r#"{"group": "g"}"#,                         // 9 missing command
            r#"{"command": ["a"], "max_attempts": -2}"#, // 10 wrong type (negative)
            r#"["a"]"#,                                  // 11 not an object
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
                "line 11"
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
        assert!(errors[7].contains("column"), "{}", errors[7]);
        assert!(
            !errors.iter().any(|e| e.contains("at line 1")),
            "{errors:#?}"
        );
    }
}
