//! Reading the PostgreSQL store's rows: a job as `jobs` and `status` show it (leniently),
//! the fields a claim runs (strictly, each with what is wrong with it), instances, ids.

use std::collections::BTreeMap;

use postgres::types::Json;
use postgres::Row;

use crate::error::Context;
use crate::parse_state;
use crate::{Instance, InstanceId, Job, JobId, Result, StoreError, StoredRun};

/// Column `index` of a row of job `id`; a value of the wrong type is reported as damage.
pub(super) fn column<'a, T: postgres::types::FromSql<'a>>(
    row: &'a Row,
    id: JobId,
    index: usize,
) -> Result<T> {
    row.try_get(index).map_err(|e| {
        StoreError::Corrupt(format!(
            "job {id}: column {index}: {e}{}",
            std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
        ))
    })
}

/// A BIGINT column of job `id` that holds a `u32`.
pub(super) fn count(row: &Row, id: JobId, index: usize) -> Result<u32> {
    let value: i64 = column(row, id, index)?;
    u32::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("job {id}: column {index} is {value}")))
}

/// Reads a row selected with [`JOB_COLUMNS`](crate::sql::JOB_COLUMNS).
///
/// Only the id and the state must be sound (the schema's CHECK keeps the state so): a
/// JSON column of the wrong shape or a number out of range (damage by hand or by another
/// version) reads as empty, so that one bad row never hides the others from `jobs` and
/// `status`. Claims check the columns they run strictly ([`StoredRun`]).
pub(super) fn read_job(row: &Row) -> Result<Job> {
    let id: JobId = row.try_get(0).ctx("read a job")?;
    let state: String = column(row, id, 1)?;
    fn lenient<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Option<T> {
        row.try_get::<_, Option<T>>(index).ok().flatten()
    }
    fn json<T: serde::de::DeserializeOwned + Default>(row: &Row, index: usize) -> T {
        lenient::<Json<T>>(row, index)
            .map(|Json(v)| v)
            .unwrap_or_default()
    }
    let small = |index| lenient::<i64>(row, index).and_then(|n| u32::try_from(n).ok());
    Ok(Job {
        id,
        state: parse_state(id, &state)?,
        group: lenient(row, 2),
        command: json(row, 3),
        tags: json(row, 4),
        env: json(row, 5),
        cwd: lenient(row, 6),
        timeout_s: lenient(row, 7),
        max_attempts: small(8),
        key: lenient(row, 9),
        attempts: small(10).unwrap_or(0),
        exit_code: lenient(row, 11),
        signal: lenient(row, 12),
        last_outcome: lenient(row, 13),
        created_at: lenient(row, 14).unwrap_or(0.0),
        started_at: lenient(row, 15),
        finished_at: lenient(row, 16),
        not_before: lenient(row, 17),
        owner: lenient(row, 18),
        cancel_requested: lenient(row, 19).unwrap_or(false),
        reason: lenient(row, 20),
        start_error: lenient(row, 21),
        priority: lenient(row, 22).unwrap_or(0),
        after: lenient::<Json<Vec<JobId>>>(row, 23)
            .map(|Json(v)| v)
            .unwrap_or_default(),
    })
}

/// The fields a claim runs, from a row of [`CLAIM`](super::claim_sql::CLAIM) (columns 3 to 8), each
/// as stored or with what is wrong with it.
pub(super) fn stored_run(row: &Row) -> StoredRun {
    fn get<'a, T: postgres::types::FromSql<'a>>(
        row: &'a Row,
        index: usize,
    ) -> std::result::Result<T, String> {
        row.try_get(index).map_err(|e| {
            let why = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            format!("not the expected value ({why})")
        })
    }
    StoredRun {
        command: get::<Json<Vec<String>>>(row, 3).map(|Json(v)| v),
        env: get::<Json<BTreeMap<String, String>>>(row, 4).map(|Json(v)| v),
        cwd: get(row, 5),
        timeout_s: get(row, 6),
        max_attempts: get(row, 7),
        attempts: get(row, 8),
    }
}

/// Reads a row of `instances` (id, host, pid, token, started_at, last_seen).
pub(super) fn read_instance(row: &Row) -> Result<Instance> {
    let id: InstanceId = row.try_get(0).ctx("list instances")?;
    let bad = |what: String| StoreError::Corrupt(format!("instance {id}: {what}"));
    let pid: i64 = row.try_get(2).map_err(|e| bad(e.to_string()))?;
    Ok(Instance {
        id,
        host: row.try_get(1).map_err(|e| bad(e.to_string()))?,
        // A pid no process can have (damage by hand) reads as 0: an instance whose
        // process is gone, so that its jobs are taken back rather than stuck.
        pid: u32::try_from(pid).unwrap_or_else(|_| {
            log::warn!("instance {id}: pid {pid} is out of range; taken for dead");
            0
        }),
        token: row.try_get(3).map_err(|e| bad(e.to_string()))?,
        started_at: row.try_get(4).map_err(|e| bad(e.to_string()))?,
        last_seen: row.try_get(5).map_err(|e| bad(e.to_string()))?,
    })
}

/// The first column of `rows`, as job ids in order.
pub(super) fn ids_of(rows: Vec<Row>, op: &'static str) -> Result<Vec<JobId>> {
    let mut ids = rows
        .iter()
        .map(|row| row.try_get::<_, JobId>(0))
        .collect::<Result<Vec<_>, _>>()
        .ctx(op)?;
    ids.sort_unstable();
    Ok(ids)
}
