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

/// A command as a shell would need it typed: words with spaces or specials quoted.
pub(super) fn shell_words(words: &[String]) -> String {
    let quote = |w: &String| {
        let plain = !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            w.clone()
        } else {
            format!("'{}'", w.replace('\'', "'\\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// A JSON value for a table cell: null as `-`, strings bare.
pub(super) fn human(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
