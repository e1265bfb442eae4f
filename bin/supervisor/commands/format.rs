//! Human forms for the verbs' tables: times, durations, commands, JSON values.

use serde_json::Value;

/// A wall-clock time in the local time zone, like `2026-11-23 16:20:04`, with
/// milliseconds and the zone when `precise`.
pub(super) fn local_time(ts: f64, precise: bool) -> String {
    let Ok(t) = jiff::Timestamp::from_nanosecond((ts * 1e9) as i128) else {
        return format!("{ts}");
    };
    let zoned = t.to_zoned(jiff::tz::TimeZone::system());
    let format = if precise {
        "%Y-%m-%d %H:%M:%S%.3f %Z"
    } else {
        "%Y-%m-%d %H:%M:%S"
    };
    zoned.strftime(format).to_string()
}

/// `42s`, `3m07s`, `2h05m`.
pub(super) fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A command as a shell would need it typed: words with spaces or specials quoted, and
/// words with control characters (a newline, an escape that would drive the terminal)
/// in bash's `$'...'` with the characters spelled out.
pub(super) fn shell_words(words: &[String]) -> String {
    let quote = |w: &String| {
        let plain = !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            w.clone()
        } else if w.chars().any(char::is_control) {
            let mut out = String::from("$'");
            for c in w.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\'' => out.push_str("\\'"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c if c.is_control() => {
                        out.push_str(&format!("\\u{:04x}", u32::from(c)));
                    }
                    c => out.push(c),
                }
            }
            out.push('\'');
            out
        } else {
            format!("'{}'", w.replace('\'', "'\\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// Text for a terminal: control characters (a newline that would break a table row, an
/// escape sequence a job's submitter chose) spelled out as Rust escapes (`\n`,
/// `\u{1b}`), everything else as it is.
pub(super) fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A JSON value for a table cell: null as `-`, strings bare (but printable).
pub(super) fn human(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => printable(s),
        other => other.to_string(),
    }
}

/// A duration as an operator types it: a number of seconds, or a number with a unit
/// (`90`, `1.5s`, `10m`, `2h`, `7d`, `1w`), within the bounds of every duration here.
pub(super) fn parse_duration(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        "w" | "week" | "weeks" => 604_800.0,
        other => {
            return Err(format!(
                "`{text}` is not a duration: unknown unit `{other}` (use s, m, h, d or w)"
            ))
        }
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (like 90, 1.5s, 10m, 2h, 7d)"))?;
    let secs = n * scale;
    if !(0.0..=supervisor_core::bounds::MAX_SECONDS).contains(&secs) {
        return Err(format!(
            "`{text}` is out of range (at most {} s)",
            supervisor_core::bounds::MAX_SECONDS
        ));
    }
    Ok(secs)
}

/// A time as unix seconds, from RFC 3339 (`2026-12-01T08:00:00Z`, `...+01:00`).
pub(super) fn parse_time(text: &str) -> Result<f64, String> {
    let t: jiff::Timestamp = text.trim().parse().map_err(|e| {
        format!("`{text}` is not a time (RFC 3339, like 2026-12-01T08:00:00Z): {e}")
    })?;
    let secs = t.as_nanosecond() as f64 / 1e9;
    if !(0.0..=supervisor_core::bounds::MAX_TIMESTAMP).contains(&secs) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse_or_say_why_not() {
        assert_eq!(parse_duration("90"), Ok(90.0));
        assert_eq!(parse_duration("1.5s"), Ok(1.5));
        assert_eq!(parse_duration("10m"), Ok(600.0));
        assert_eq!(parse_duration("2h"), Ok(7200.0));
        assert_eq!(parse_duration("7d"), Ok(604_800.0));
        assert_eq!(parse_duration("1w"), Ok(604_800.0));
        for bad in ["", "soon", "5y", "-3s", "1e300", "1..2s", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_time("2001-01-01T00:00:00Z"), Ok(978_307_200.0));
        assert_eq!(parse_time("2001-01-01T01:00:00+01:00"), Ok(978_307_200.0));
        assert!(parse_time("tomorrow").is_err());
    }
}
