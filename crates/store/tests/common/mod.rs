//! Helpers shared by the store's integration tests: stores of either kind behind one
//! type, and small builders of jobs, routes and credits.
#![allow(dead_code)]

pub mod conformance;
pub mod model;

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use supervisor_store::{JobStore, NewJob, PostgresStore, Route, SqliteStore};

/// A job store of any kind, owning whatever keeps it alive (a temporary directory, a
/// database dropped at the end), usable as a `dyn JobStore`.
pub struct TestStore {
    // Declared first: dropped (closing its connection) before the guard.
    store: Box<dyn JobStore + Send>,
    reopen: Opener,
    _guard: Box<dyn Send>,
}

impl TestStore {
    /// Another handle on the same store, as another process would have.
    pub fn reopen(&self) -> Box<dyn JobStore + Send> {
        (self.reopen)()
    }

    /// A function that opens more handles on the same store, for other threads.
    pub fn opener(&self) -> Opener {
        Arc::clone(&self.reopen)
    }
}

impl Deref for TestStore {
    type Target = dyn JobStore + Send;

    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

impl DerefMut for TestStore {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.store
    }
}

/// Opens another handle on a store.
pub type Opener = Arc<dyn Fn() -> Box<dyn JobStore + Send> + Send + Sync>;

/// Makes a fresh, empty store.
pub type Factory = fn() -> TestStore;

/// A fresh SQLite store in a temporary directory.
pub fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let store = SqliteStore::open(&path).unwrap();
    TestStore {
        store: Box::new(store),
        reopen: Arc::new(move || Box::new(SqliteStore::open(&path).unwrap())),
        _guard: Box::new(dir),
    }
}

/// A fresh PostgreSQL store in a database of its own, dropped at the end.
pub fn postgres() -> TestStore {
    let db = PgDatabase::new();
    let url = db.url.clone();
    let store = PostgresStore::connect(&url).unwrap();
    TestStore {
        store: Box::new(store),
        reopen: Arc::new(move || Box::new(PostgresStore::connect(&url).unwrap())),
        _guard: Box::new(db),
    }
}

#[allow(unused_imports)]
pub use supervisor_store::testing::{pg_server_url, pg_url_with_db, PgDatabase, PG_URL_VAR};

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
pub fn instance(store: &mut (dyn JobStore + Send), pid: u32) -> i64 {
    store
        .register_instance("host", pid, &format!("token-{pid}"), 1.0)
        .unwrap()
}
