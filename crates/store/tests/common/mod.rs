//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use supervisor_store::{JobStore, NewJob, Route, SqliteStore};
use tempfile::TempDir;

/// A fresh store in a temporary directory (kept alive by the returned guard).
pub fn store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("jobs.db")).unwrap();
    (dir, store)
}

/// A job running `cmd` with nothing else set.
pub fn job(cmd: &str) -> NewJob {
    NewJob::new([cmd])
}

/// A job naming `group`.
pub fn job_in(group: &str) -> NewJob {
    NewJob {
        group: Some(group.into()),
        ..job("true")
    }
}

/// A job with these tags.
pub fn tagged(pairs: &[(&str, &str)]) -> NewJob {
    NewJob {
        tags: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..job("true")
    }
}

/// A route taking only jobs that name it.
pub fn named(group: &str) -> Route {
    Route {
        group: group.into(),
        matches: None,
    }
}

/// A route taking jobs whose tags match.
pub fn matching(group: &str, m: &[(&str, &[&str])]) -> Route {
    Route {
        group: group.into(),
        matches: Some(
            m.iter()
                .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
                .collect(),
        ),
    }
}

/// A credits map.
pub fn credits(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(g, n)| (g.to_string(), *n)).collect()
}

/// Registers an instance with a made-up pid.
pub fn instance(store: &mut SqliteStore, pid: u32) -> i64 {
    store
        .register_instance("host", pid, &format!("token-{pid}"), 1.0)
        .unwrap()
}
