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

/// A duration as an operator types it: a number of seconds, or numbers with units,
/// largest first or not (`90`, `1.5s`, `10m`, `2h`, `1h30m`, `1d 12h`, `7d`, `1w`),
/// within the bounds of every duration here.
pub(super) fn parse_duration(text: &str) -> Result<f64, String> {
    let not_one = || format!("`{text}` is not a duration (like 90, 1.5s, 10m, 1h30m, 7d)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(not_one());
    }
    let mut secs = 0.0;
    let mut parts = 0;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(split);
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            // A bare number is seconds, alone only (`1h30` says nothing of its unit).
            "" if parts == 0 && after.trim().is_empty() => 1.0,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "week" | "weeks" => 604_800.0,
            "" => return Err(not_one()),
            other => {
                return Err(format!(
                    "`{text}` is not a duration: unknown unit `{other}` (use s, m, h, d or w)"
                ))
            }
        };
        let n: f64 = number.parse().map_err(|_| not_one())?;
        secs += n * scale;
        parts += 1;
        rest = after.trim_start();
    }
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
        assert_eq!(parse_duration("1h30m"), Ok(5400.0));
        assert_eq!(parse_duration("1d 12h"), Ok(129_600.0));
        assert_eq!(parse_duration("90 s"), Ok(90.0));
        assert_eq!(parse_duration("1m30s"), Ok(90.0));
        for bad in [
            "", "soon", "5y", "-3s", "1e300", "1..2s", "s", "1h30", "1h-5m", "h1",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_time("2001-01-01T00:00:00Z"), Ok(978_307_200.0));
        assert_eq!(parse_time("2001-01-01T01:00:00+01:00"), Ok(978_307_200.0));
        assert!(parse_time("tomorrow").is_err());
    }
}
