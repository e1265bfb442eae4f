//! One set of bounds for every value that reaches the supervisor from outside: the config,
//! `submit` (arguments and `--file` lines), store rows and IPC messages all check against
//! these, so that a value one of them accepts is one every other accepts too, and none can
//! overflow a conversion further on.
//!
//! The checks return the reason as text without the field's name; the caller prefixes the
//! name it knows the value by (`timeout_s`, `--timeout`, `groups[0].job_timeout_s`).

use std::time::Duration;

/// The longest span of seconds any setting or job field may hold: about 31 years.
pub const MAX_SECONDS: f64 = 1_000_000_000.0;

/// The most workers one group may have: each is a process with a few file descriptors
/// and a thread or two of the supervisor's.
pub const MAX_WORKERS: u32 = 10_000;

/// The longest group name, in characters (the config's and a submitted job's).
pub const MAX_GROUP_NAME: usize = 255;

/// The most attempts a job or group may allow.
pub const MAX_ATTEMPTS: u32 = 1_000_000;

/// The longest single argument or environment entry (`KEY=VALUE`) that `execve` takes on
/// Linux (`MAX_ARG_STRLEN`, 32 pages, counting its NUL byte).
pub const MAX_ARG_BYTES: usize = 131_072;

/// The most bytes a job's own arguments and environment may take together (strings, their
/// NUL bytes and their pointers). Linux allows a quarter of the stack limit (2 MiB at the
/// default 8 MiB); the worker's own environment also has to fit, so a job keeps to half.
pub const MAX_EXEC_BYTES: usize = 1_048_576;

/// A span of seconds such as a timeout: finite, more than 0, at most [`MAX_SECONDS`].
pub fn check_seconds(s: f64) -> Result<(), String> {
    if s.is_finite() && s > 0.0 && s <= MAX_SECONDS {
        Ok(())
    } else {
        Err(format!(
            "must be a number of seconds > 0 and at most {MAX_SECONDS:.0}, not {s}"
        ))
    }
}

/// An attempt limit: at least 1, at most [`MAX_ATTEMPTS`].
pub fn check_attempts(n: i64) -> Result<(), String> {
    if (1..=i64::from(MAX_ATTEMPTS)).contains(&n) {
        Ok(())
    } else {
        Err(format!("must be from 1 to {MAX_ATTEMPTS}, not {n}"))
    }
}

/// A job's priority is within ±this.
pub const MAX_PRIORITY: i64 = 1_000_000_000;

/// The latest time a job may be delayed to (unix seconds, year 33658).
pub const MAX_TIMESTAMP: f64 = 1e12;

/// The most bytes a message kept for the operator (a start error, a reason) keeps.
pub const MAX_NOTE_BYTES: usize = 4096;

/// `text` cut to at most [`MAX_NOTE_BYTES`], on a character boundary, marked when cut.
pub fn note(mut text: String) -> String {
    if text.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Seconds as a duration, for a value that may not have been checked: NaN and negative
/// values give zero, anything past [`MAX_SECONDS`] (infinity too) gives [`MAX_SECONDS`].
/// Never panics, unlike [`Duration::from_secs_f64`].
pub fn duration(s: f64) -> Duration {
    if s.is_nan() || s <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(s.min(MAX_SECONDS))
    }
}

/// Whether `execve` can take these arguments and this environment (each `KEY=VALUE`):
/// no entry over [`MAX_ARG_BYTES`], all of them within [`MAX_EXEC_BYTES`]. The reason
/// names the first entry that does not fit, as `command[i]` or `env.KEY`.
pub fn check_exec_size<'a>(
    argv: impl IntoIterator<Item = &'a str>,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    let pointer = std::mem::size_of::<usize>();
    let mut total = 0usize;
    let mut add = |what: &dyn Fn() -> String, bytes: usize| {
        if bytes > MAX_ARG_BYTES {
            return Err(format!(
                "{}: {bytes} bytes is more than one argument or variable may hold ({MAX_ARG_BYTES})",
                what()
            ));
        }
        total = total.saturating_add(bytes + pointer);
        if total > MAX_EXEC_BYTES {
            return Err(format!(
                "{}: the command and environment together are over {MAX_EXEC_BYTES} bytes, \
                 more than a program can be started with",
                what()
            ));
        }
        Ok(())
    };
    for (i, arg) in argv.into_iter().enumerate() {
        add(&|| format!("command[{i}]"), arg.len() + 1)?;
    }
    for (k, v) in env {
        add(&|| format!("env.{k}"), k.len() + v.len() + 2)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_bounded_on_both_sides() {
        for ok in [1e-9, 0.5, 1.0, MAX_SECONDS] {
            check_seconds(ok).unwrap();
        }
        for bad in [
            0.0,
            -1.0,
            1e300,
            MAX_SECONDS * 1.01,
            f64::NAN,
            f64::INFINITY,
        ] {
            let e = check_seconds(bad).unwrap_err();
            assert!(e.contains("at most 1000000000"), "{e}");
        }
    }

    #[test]
    fn attempts_are_bounded() {
        check_attempts(1).unwrap();
        check_attempts(i64::from(MAX_ATTEMPTS)).unwrap();
        assert!(check_attempts(0).is_err());
        assert!(check_attempts(-5).is_err());
        assert!(check_attempts(i64::MAX).is_err());
    }

    #[test]
    fn duration_never_panics() {
        assert_eq!(duration(f64::NAN), Duration::ZERO);
        assert_eq!(duration(-3.0), Duration::ZERO);
        assert_eq!(duration(1.5), Duration::from_millis(1500));
        assert_eq!(duration(1e300), Duration::from_secs(1_000_000_000));
        assert_eq!(duration(f64::INFINITY), Duration::from_secs(1_000_000_000));
    }

    #[test]
    fn exec_size_names_what_does_not_fit() {
        check_exec_size(["true"], [("A", "1")]).unwrap();
        let big = "x".repeat(MAX_ARG_BYTES);
        let e = check_exec_size(["echo", &big], []).unwrap_err();
        assert!(e.starts_with("command[1]:"), "{e}");
        let e = check_exec_size(["true"], [("BIG", big.as_str())]).unwrap_err();
        assert!(e.starts_with("env.BIG:"), "{e}");
        let chunk = "y".repeat(100_000);
        let many: Vec<&str> = std::iter::repeat_n(chunk.as_str(), 11).collect();
        let e = check_exec_size(many, []).unwrap_err();
        assert!(
            e.starts_with("command[10]:") && e.contains("together"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod note_tests {
    use super::*;

    #[test]
    fn a_note_is_cut_on_a_character_boundary_and_says_so() {
        assert_eq!(note("short".into()), "short");
        let long = "é".repeat(MAX_NOTE_BYTES);
        let cut = note(long);
        assert!(
            cut.len() <= MAX_NOTE_BYTES && cut.ends_with("..."),
            "{}",
            cut.len()
        );
        assert!(cut.trim_end_matches("...").chars().all(|c| c == 'é'));
    }
}
