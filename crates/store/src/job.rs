//! A job as submitted ([`NewJob`]) and its validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use supervisor_core::bounds;

/// A job to queue: the fields of the contract's job object.
///
/// Deserialises from one line of `submit --file` (unknown fields are errors; everything
/// but `command` is optional).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// Program and arguments; the program must not be empty.
    pub command: Vec<String>,
    /// The group it names (it then goes to that group only).
    #[serde(default)]
    pub group: Option<String>,
    /// Tags that a group's `match` selects (for jobs that name no group).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Timeout in seconds (overrides the group's `job_timeout_s`).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Attempt limit (overrides the group's `max_attempts`).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Idempotency key: submitting again while a job with this key is not finished returns
    /// that job's id.
    #[serde(default)]
    pub key: Option<String>,
    /// Higher runs first; first come first served within a priority.
    #[serde(default)]
    pub priority: i64,
    /// Not claimed before this time (unix seconds).
    #[serde(default)]
    pub not_before: Option<f64>,
    /// Runs only once all these jobs succeeded (canceled if one ends otherwise).
    #[serde(default)]
    pub after: Vec<i64>,
}

impl NewJob {
    /// A job running `command` with every other field unset.
    pub fn new<S: Into<String>>(command: impl IntoIterator<Item = S>) -> Self {
        NewJob {
            command: command.into_iter().map(Into::into).collect(),
            ..NewJob::default()
        }
    }

    /// Checks the job, naming the first bad field: `command` not empty and its program not
    /// empty, `timeout_s` and `max_attempts` within [`supervisor_core::bounds`] (the same
    /// bounds as the config's), `env` keys not empty and without `=`, `group` and `key` not
    /// empty, no NUL byte in any string, and a command and environment small enough for
    /// `execve` to take. The store checks every row it claims the same way.
    pub fn validate(&self) -> Result<(), String> {
        match self.command.first() {
            None => return Err("command: must not be empty".into()),
            Some(program) if program.is_empty() => {
                return Err("command[0]: the program must not be empty".into())
            }
            Some(_) => {}
        }
        for (i, arg) in self.command.iter().enumerate() {
            no_nul(arg, || format!("command[{i}]"))?;
        }
        if let Some(group) = &self.group {
            if group.is_empty() {
                return Err("group: must not be empty".into());
            }
            no_nul(group, || "group".into())?;
            // As the config's group names: no group could ever take the job.
            if group.chars().any(char::is_control) {
                return Err(format!(
                    "group: must not contain control characters, found {group:?}"
                ));
            }
            if group.chars().count() > bounds::MAX_GROUP_NAME {
                let max = bounds::MAX_GROUP_NAME;
                return Err(format!("group: longer than {max} characters"));
            }
        }
        for (k, v) in &self.tags {
            if k.is_empty() {
                return Err("tags: a key must not be empty".into());
            }
            no_nul(k, || format!("tags key {k:?}"))?;
            no_nul(v, || format!("tags.{k}"))?;
        }
        for (k, v) in &self.env {
            if k.is_empty() {
                return Err("env: a variable name must not be empty".into());
            }
            if k.contains('=') {
                return Err(format!("env key {k:?}: must not contain '='"));
            }
            no_nul(k, || format!("env key {k:?}"))?;
            no_nul(v, || format!("env.{k}"))?;
        }
        if let Some(cwd) = &self.cwd {
            if cwd.is_empty() {
                return Err("cwd: must not be empty".into());
            }
            no_nul(cwd, || "cwd".into())?;
        }
        if let Some(t) = self.timeout_s {
            bounds::check_seconds(t).map_err(|e| format!("timeout_s: {e}"))?;
        }
        if let Some(n) = self.max_attempts {
            bounds::check_attempts(i64::from(n)).map_err(|e| format!("max_attempts: {e}"))?;
        }
        if let Some(key) = &self.key {
            if key.is_empty() {
                return Err("key: must not be empty".into());
            }
            no_nul(key, || "key".into())?;
        }
        if !(-bounds::MAX_PRIORITY..=bounds::MAX_PRIORITY).contains(&self.priority) {
            return Err(format!(
                "priority: {} is out of range (-{max} to {max})",
                self.priority,
                max = bounds::MAX_PRIORITY
            ));
        }
        if self.after.len() > MAX_AFTER {
            return Err(format!(
                "after: {} jobs, more than the {MAX_AFTER} a job may wait for",
                self.after.len()
            ));
        }
        if let Some((i, id)) = self.after.iter().enumerate().find(|(_, id)| **id <= 0) {
            return Err(format!("after[{i}]: {id} is not a job id"));
        }
        if let Some(t) = self.not_before {
            if !(0.0..=bounds::MAX_TIMESTAMP).contains(&t) {
                return Err(format!(
                    "not_before: {t} is not a time (unix seconds, 0 to {})",
                    bounds::MAX_TIMESTAMP
                ));
            }
        }
        bounds::check_exec_size(
            self.command.iter().map(String::as_str),
            self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }
}

/// The most jobs one job may run after.
pub const MAX_AFTER: usize = 1000;

/// Fails with "`field`: must not contain a NUL byte" if `s` holds one.
fn no_nul(s: &str, field: impl FnOnce() -> String) -> Result<(), String> {
    if s.contains('\0') {
        Err(format!("{}: must not contain a NUL byte", field()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(job: &NewJob) -> String {
        job.validate().unwrap_err()
    }

    #[test]
    fn valid_jobs_pass() {
        let mut job = NewJob::new(["echo", "hi"]);
        job.validate().unwrap();
        job.env.insert("A".into(), "".into());
        job.tags.insert("arch".into(), "x86_64".into());
        job.timeout_s = Some(0.5);
        job.max_attempts = Some(1);
        job.key = Some("k".into());
        job.group = Some("g".into());
        job.cwd = Some("/tmp".into());
        job.validate().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        assert!(err(&NewJob::default()).starts_with("command:"));
        assert!(err(&NewJob::new([""])).starts_with("command[0]:"));
        assert!(err(&NewJob::new(["a", "b\0"])).starts_with("command[1]:"));

        let base = NewJob::new(["true"]);
        let bad = |f: &dyn Fn(&mut NewJob)| {
            let mut j = base.clone();
            f(&mut j);
            err(&j)
        };
        assert!(bad(&|j| j.timeout_s = Some(0.0)).starts_with("timeout_s:"));
        assert!(bad(&|j| j.timeout_s = Some(-1.0)).starts_with("timeout_s:"));
        assert!(bad(&|j| j.timeout_s = Some(f64::NAN)).starts_with("timeout_s:"));
        assert!(bad(&|j| j.timeout_s = Some(f64::INFINITY)).starts_with("timeout_s:"));
        assert!(bad(&|j| j.timeout_s = Some(1e300)).starts_with("timeout_s:"));
        assert!(bad(&|j| j.max_attempts = Some(0)).starts_with("max_attempts:"));
        assert!(bad(&|j| j.max_attempts = Some(u32::MAX)).starts_with("max_attempts:"));
        assert!(bad(&|j| j.command.push("x".repeat(200_000))).starts_with("command[1]:"));
        assert!(bad(&|j| {
            j.env.insert("BIG".into(), "x".repeat(200_000));
        })
        .starts_with("env.BIG:"));
        assert!(bad(&|j| {
            j.env.insert("".into(), "x".into());
        })
        .starts_with("env:"));
        assert!(bad(&|j| {
            j.env.insert("A=B".into(), "x".into());
        })
        .contains("'='"));
        assert!(bad(&|j| {
            j.env.insert("A".into(), "x\0".into());
        })
        .starts_with("env.A:"));
        assert!(bad(&|j| j.cwd = Some("/a\0".into())).starts_with("cwd:"));
        assert!(bad(&|j| j.key = Some(String::new())).starts_with("key:"));
        assert!(bad(&|j| j.group = Some(String::new())).starts_with("group:"));
        // As the config's group names: none could take such a job.
        assert!(bad(&|j| j.group = Some("a\nb".into())).contains("control characters"));
        assert!(bad(&|j| j.group = Some("g".repeat(256))).starts_with("group:"));
        assert!(bad(&|j| {
            j.tags.insert(String::new(), "x".into());
        })
        .starts_with("tags:"));
        assert!(bad(&|j| j.after = vec![1, -2]).starts_with("after[1]:"));
    }
}
