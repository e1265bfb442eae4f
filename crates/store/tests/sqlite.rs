//! `SqliteStore`: the conformance tests every `JobStore` passes, and what is SQLite's
//! own (schema versions, migrations, a file that is not a database).

mod common;

use common::conformance::conformance_tests;
use supervisor_store::{JobStore, SqliteStore, StoreError, SCHEMA_VERSION};

conformance_tests!(common::sqlite);

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    drop(s);
    // Opening again is fine (nothing to migrate).
    SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 98)
        .unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    match &err {
        StoreError::SchemaTooNew {
            found, supported, ..
        } => {
            assert_eq!(*found, SCHEMA_VERSION + 98);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("version {}", SCHEMA_VERSION + 98)),
        "{msg}"
    );
    assert!(msg.contains(&format!("up to {SCHEMA_VERSION}")), "{msg}");
    assert!(msg.contains("jobs.db"), "{msg}");
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    std::fs::write(&path, vec![b'x'; 4096]).unwrap();
    let err = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("jobs.db"), "{err}");
}

#[test]
fn schema_2_gains_last_seen() {
    // A file as schema version 2 left it (migrations 1 and 2 as shipped), with one
    // instance registered.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        r#"
        CREATE TABLE instances (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            host        TEXT    NOT NULL,
            pid         INTEGER NOT NULL,
            token       TEXT    NOT NULL,
            started_at  REAL    NOT NULL
        );
        CREATE TABLE jobs (
            id               INTEGER PRIMARY KEY AUTOINCREMENT,
            state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded',
                                     'failed', 'timed_out', 'dead', 'canceled')),
            named_group      TEXT,
            run_group        TEXT,
            command          TEXT    NOT NULL,
            tags             TEXT    NOT NULL,
            env              TEXT    NOT NULL,
            cwd              TEXT,
            timeout_s        REAL,
            max_attempts     INTEGER,
            idem_key         TEXT,
            attempts         INTEGER NOT NULL DEFAULT 0,
            exit_code        INTEGER,
            signal           INTEGER,
            last_outcome     TEXT,
            created_at       REAL    NOT NULL,
            started_at       REAL,
            finished_at      REAL,
            not_before       REAL,
            owner            INTEGER REFERENCES instances (id),
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            CHECK ((state = 'running') = (owner IS NOT NULL))
        );
        CREATE UNIQUE INDEX jobs_live_key ON jobs (idem_key)
            WHERE idem_key IS NOT NULL
              AND (state IN ('queued', 'running')
                   OR (state IN ('failed', 'timed_out') AND not_before IS NOT NULL));
        CREATE INDEX jobs_queued ON jobs (id) WHERE state = 'queued';
        CREATE INDEX jobs_running ON jobs (owner) WHERE state = 'running';
        CREATE INDEX jobs_waiting ON jobs (not_before) WHERE not_before IS NOT NULL;
        INSERT INTO instances (host, pid, token, started_at) VALUES ('h', 7, 't', 12.5);
        PRAGMA user_version = 2;
        "#,
    )
    .unwrap();
    drop(conn);

    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(SCHEMA_VERSION, 8);
    assert_eq!(s.schema_version().unwrap(), 8);
    let old = &s.instances().unwrap()[0];
    assert_eq!((old.started_at, old.last_seen), (12.5, 12.5));
    assert!(s.touch_instance(old.id, 20.0).unwrap());
    assert_eq!(s.instances().unwrap()[0].last_seen, 20.0);
    let me = s.register_instance("h", 8, "u", 30.0).unwrap();
    s.submit(&[common::job_in("g")], 30.0).unwrap();
    let res = s
        .claim(
            me,
            &[common::named("g")],
            &mut common::credits(&[("g", 1)]),
            31.0,
        )
        .unwrap();
    assert_eq!(res.jobs.len(), 1);
}

#[test]
fn schema_8_links_every_dependency_a_job_names() {
    // Version 7 linked only the dependencies a job waited on: one canceled at submit for
    // a dependency already dead had none.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let mut s = SqliteStore::open(&path).unwrap();
    let dep = s.submit(&[common::job_in("g")], 1.0).unwrap()[0];
    let mut job = common::job_in("g");
    job.after = vec![dep];
    let id = s.submit(&[job], 1.0).unwrap()[0];
    drop(s);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DELETE FROM job_deps; PRAGMA user_version = 7;")
        .unwrap();
    drop(conn);
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), 8);
    drop(s);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let linked: Vec<(i64, i64)> = conn
        .prepare("SELECT job, dep FROM job_deps")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(linked, [(id, dep)]);
}
