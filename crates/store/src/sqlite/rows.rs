//! Reading the SQLite store's rows: a job as `jobs` and `status` show it (leniently), and
//! the fields a claim runs (strictly, each with what is wrong with it).

use rusqlite::types::{FromSql, Value};
use rusqlite::Row;

use crate::error::Context;
use crate::parse_state;
use crate::{Instance, Job, JobId, Result, StoreError, StoredRun};

/// Column `index` of a row of job `id`; a value of the wrong type is reported as damage.
pub(super) fn column<T: FromSql>(row: &Row<'_>, id: JobId, index: usize) -> Result<T> {
    row.get(index).map_err(|source| match source {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => {
            StoreError::Corrupt(format!("job {id}: column {index}: {source}"))
        }
        source => StoreError::Sqlite {
            op: "read a job",
            source,
        },
    })
}

/// Reads a row selected with [`JOB_COLUMNS`](crate::sql::JOB_COLUMNS).
///
/// Only the id and the state must be sound (the schema's CHECK keeps the state so): a
/// column damaged by hand or by another version reads as empty, with a warning, so that
/// one bad row never hides the others from `jobs` and `status`. Claims check the columns
/// they run strictly ([`StoredRun`]).
pub(super) fn read_job(row: &Row<'_>) -> Result<Job> {
    let id: JobId = row.get(0).ctx("read a job")?;
    let state = parse_state(id, &column::<String>(row, id, 1)?)?;
    let value = |index| row.get::<_, Value>(index).unwrap_or(Value::Null);
    let text = |index| match value(index) {
        Value::Text(t) => Some(t),
        _ => None,
    };
    let real = |index| match value(index) {
        Value::Real(f) => Some(f),
        Value::Integer(i) => Some(i as f64),
        _ => None,
    };
    let int = |index| match value(index) {
        Value::Integer(i) => Some(i),
        _ => None,
    };
    fn json<T: serde::de::DeserializeOwned + Default>(text: Option<String>) -> T {
        text.and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }
    Ok(Job {
        id,
        state,
        group: text(2),
        command: json(text(3)),
        tags: json(text(4)),
        env: json(text(5)),
        cwd: text(6),
        timeout_s: real(7),
        max_attempts: int(8).and_then(|n| u32::try_from(n).ok()),
        key: text(9),
        attempts: int(10).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        exit_code: int(11).and_then(|n| i32::try_from(n).ok()),
        signal: int(12).and_then(|n| i32::try_from(n).ok()),
        last_outcome: text(13),
        created_at: real(14).unwrap_or(0.0),
        started_at: real(15),
        finished_at: real(16),
        not_before: real(17),
        owner: int(18),
        cancel_requested: int(19).is_some_and(|n| n != 0),
        reason: text(20),
        start_error: text(21),
        priority: int(22).unwrap_or(0),
        after: json(text(23)),
    })
}

/// A column of a candidate row as a claim reads it: its value, or what is wrong with it.
pub(super) fn stored<T>(
    value: &Value,
    read: impl Fn(&Value) -> Option<T>,
) -> std::result::Result<T, String> {
    read(value).ok_or_else(|| format!("a stored value of the wrong type: {}", shown(value)))
}

/// A raw column value, short, for a reason.
pub(super) fn shown(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => format!("{:?}", t.chars().take(60).collect::<String>()),
        Value::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

/// A JSON text column of a candidate row.
pub(super) fn stored_json<T: serde::de::DeserializeOwned>(
    value: &Value,
) -> std::result::Result<T, String> {
    match value {
        Value::Text(text) => {
            serde_json::from_str(text).map_err(|e| format!("not the expected JSON ({e})"))
        }
        other => Err(format!(
            "a stored value of the wrong type: {}",
            shown(other)
        )),
    }
}

/// The fields a claim runs, from a row of [`CANDIDATES`](super::claim_sql::CANDIDATES) (columns 3
/// to 8).
pub(super) fn stored_run(row: &[Value]) -> StoredRun {
    let opt_text = |v: &Value| match v {
        Value::Null => Some(None),
        Value::Text(t) => Some(Some(t.clone())),
        _ => None,
    };
    let opt_real = |v: &Value| match v {
        Value::Null => Some(None),
        Value::Real(f) => Some(Some(*f)),
        Value::Integer(i) => Some(Some(*i as f64)),
        _ => None,
    };
    let opt_int = |v: &Value| match v {
        Value::Null => Some(None),
        Value::Integer(i) => Some(Some(*i)),
        _ => None,
    };
    StoredRun {
        command: stored_json(&row[3]),
        env: stored_json(&row[4]),
        cwd: stored(&row[5], opt_text),
        timeout_s: stored(&row[6], opt_real),
        max_attempts: stored(&row[7], opt_int),
        attempts: stored(&row[8], |v| match v {
            Value::Integer(i) => Some(*i),
            _ => None,
        }),
    }
}

/// Reads a row of `instances` (id, host, pid, token, started_at, last_seen).
///
/// Damage by hand reads as an instance whose process is gone (pid 0, never seen), so that
/// its jobs are taken back rather than stuck and no start of a supervisor fails on it.
pub(super) fn read_instance(row: &Row<'_>) -> rusqlite::Result<Instance> {
    let value = |i| row.get::<_, Value>(i).unwrap_or(Value::Null);
    let text = |i| match value(i) {
        Value::Text(t) => t,
        _ => String::new(),
    };
    let real = |i| match value(i) {
        Value::Real(f) => f,
        Value::Integer(n) => n as f64,
        _ => 0.0,
    };
    Ok(Instance {
        id: row.get(0)?,
        host: text(1),
        pid: match value(2) {
            Value::Integer(n) => u32::try_from(n).unwrap_or(0),
            _ => 0,
        },
        token: text(3),
        started_at: real(4),
        last_seen: real(5),
    })
}
