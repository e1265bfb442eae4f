//! Unit tests of the SQLite store: the plans of its hot queries, and the pages a claim and an
//! outcome write.

use super::claim_sql::{runnable_sql, waiting_sql, CANDIDATES, UNROUTED};
use super::*;
use crate::OutcomeKind;

/// The query plan of `sql`, one step a line.
fn plan(store: &SqliteStore, sql: &str, params: &[Value]) -> String {
    let mut stmt = store
        .conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap();
    let steps: Vec<String> = stmt
        .query_map(params_from_iter(params), |row| row.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    steps.join("\n")
}

#[test]
fn hot_queries_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("jobs.db")).unwrap();
    let now = Value::Real(1.0);
    let groups = [Value::Text("g".into()), Value::Text("t".into())];
    let no_full_scan = |p: &str| !p.lines().any(|l| l.trim_end() == "SCAN jobs");

    // A claim of one group: a range of its queue in (priority, id) order, whatever the
    // depth, with no sort.
    let p = plan(
        &store,
        CANDIDATES,
        &[
            Value::Text("g".into()),
            Value::Integer(0),
            Value::Integer(5),
            Value::Integer(i64::MAX),
        ],
    );
    assert!(p.contains("USING INDEX jobs_claimable (route=?"), "{p}");
    assert!(!p.contains("TEMP B-TREE") && no_full_scan(&p), "{p}");

    // The backlog: runnable jobs and the earliest waiting one, for these groups.
    let args = [std::slice::from_ref(&now), &groups[..]].concat();
    let p = plan(&store, &runnable_sql(2), &groups);
    assert!(p.contains("USING INDEX jobs_claimable (route=?)"), "{p}");
    assert!(no_full_scan(&p), "{p}");
    let p = plan(&store, &waiting_sql(2), &args);
    assert!(p.contains("USING INDEX jobs_waiting"), "{p}");
    assert!(no_full_scan(&p), "{p}");

    // The jobs not routed yet.
    let p = plan(&store, UNROUTED, &[Value::Integer(5)]);
    assert!(p.contains("USING INDEX jobs_unrouted"), "{p}");
    assert!(no_full_scan(&p), "{p}");

    let p = plan(&store, MATERIALISE_RETRIES, std::slice::from_ref(&now));
    assert!(p.contains("USING INDEX jobs_waiting"), "{p}");

    let owner_now = [Value::Integer(1), now.clone()];
    let p = plan(&store, &TAKE_BACK_ALL, &owner_now);
    assert!(p.contains("INDEX jobs_running (owner=?)"), "{p}");
    let p = plan(
        &store,
        &RELEASE,
        &[
            owner_now.as_slice(),
            &[Value::Integer(7), Value::Integer(1)],
        ]
        .concat(),
    );
    assert!(p.contains("USING INTEGER PRIMARY KEY (rowid=?)"), "{p}");

    for sql in [
        "SELECT id, attempts FROM jobs WHERE state = 'running' AND owner = ?1",
        "SELECT id FROM jobs WHERE owner = ?1 AND state = 'running' AND cancel_requested \
         ORDER BY id",
    ] {
        let p = plan(&store, sql, &[Value::Integer(1)]);
        assert!(
            p.contains("USING INDEX jobs_running (owner=?)"),
            "{sql}: {p}"
        );
    }
}

/// Claims and outcomes touch few pages: only live jobs are indexed. Counted as the
/// frames each adds to the write-ahead log.
#[test]
fn a_claim_and_an_outcome_write_few_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("jobs.db")).unwrap();
    store.disable_autocheckpoint().unwrap();
    let job: NewJob = serde_json::from_str(r#"{"command": ["true"], "group": "g"}"#).unwrap();
    store.submit(&vec![job; 500], 1.0).unwrap();
    let me = store.register_instance("h", 1, "t", 1.0).unwrap();
    let routes = [Route {
        group: "g".into(),
        matches: None,
    }];
    // Nothing checkpoints, so the log only grows: its size counts the frames.
    let wal = dir.path().join("jobs.db-wal");
    let frames = |_: &SqliteStore| std::fs::metadata(&wal).unwrap().len() / (4096 + 24);
    // Warm up past the first pages of each index, then measure.
    let mut claim_frames = 0;
    let mut record_frames = 0;
    for i in 0..200 {
        let before = frames(&store);
        let mut credits = BTreeMap::from([("g".to_string(), 1)]);
        let claimed = store.claim(me, &routes, &mut credits, 2.0).unwrap().jobs;
        let mid = frames(&store);
        let j = &claimed[0];
        let outcome = OutcomeRecord {
            kind: OutcomeKind::Succeeded,
            exit_code: Some(0),
            signal: None,
            start_error: None,
            reason: None,
        };
        assert!(store
            .record_outcome(j.id, j.attempt, me, &outcome, AfterAttempt::Done, 3.0)
            .unwrap());
        let after = frames(&store);
        if i >= 100 {
            claim_frames += mid - before;
            record_frames += after - mid;
        }
    }
    // Version 1 wrote about 7 and 7.
    assert!(
        claim_frames <= 350,
        "claims wrote {claim_frames} pages per 100"
    );
    assert!(
        record_frames <= 250,
        "outcomes wrote {record_frames} pages per 100"
    );
}

/// Rows damaged by hand (the `sqlite3` shell stores any value in any column): each ends
/// `dead` with a reason naming the column, the queue goes on, and every job still reads.
#[test]
fn a_damaged_row_ends_dead_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let job: NewJob = serde_json::from_str(r#"{"command": ["true"], "group": "g"}"#).unwrap();
    let ids = store.submit(&vec![job; 8], 1.0).unwrap();
    let me = store.register_instance("h", 1, "t", 1.0).unwrap();
    let hand = rusqlite::Connection::open(&path).unwrap();
    let damage = [
        ("not_before = 'x'", "not_before"),
        ("priority = 'abc'", "priority"),
        ("priority = 1e300", "priority"),
        ("waiting_on = -1", "waiting_on"),
        ("state = 'running', owner = 424242", "owner"),
        ("created_at = 'yesterday'", "created_at"),
        ("not_before = 1e999", "not_before"),
    ];
    for (i, (set, _)) in damage.iter().enumerate() {
        hand.execute(&format!("UPDATE jobs SET {set} WHERE id = ?1"), [ids[i]])
            .unwrap_or_else(|e| panic!("{set}: {e}"));
    }
    let routes = [Route {
        group: "g".into(),
        matches: None,
    }];
    let mut credits = BTreeMap::from([("g".to_string(), 8)]);
    let claimed = store.claim(me, &routes, &mut credits, 2.0).unwrap();
    let claimed: Vec<i64> = claimed.jobs.iter().map(|j| j.id).collect();
    assert_eq!(claimed, [ids[7]], "only the sound job is claimed");
    for (i, (set, column)) in damage.iter().enumerate() {
        let j = store.get(ids[i], 3.0).unwrap().expect("it still reads");
        assert_eq!(j.state, JobState::Dead, "{set}");
        let reason = j.reason.unwrap_or_default();
        assert!(
            reason.starts_with(
                "the stored job cannot be run: its row holds what the store cannot use in"
            ) && reason.contains(column),
            "{set}: {reason}"
        );
    }
    assert!(store.list(None, 3.0).is_ok(), "the list reads");

    // Damage done before this version of the store: found when the file is migrated.
    let job: NewJob = serde_json::from_str(r#"{"command": ["true"], "group": "g"}"#).unwrap();
    let more = store.submit(&vec![job; 2], 4.0).unwrap();
    drop(store);
    hand.execute_batch(
        "DROP TRIGGER job_row_damaged_by_insert; DROP TRIGGER job_row_damaged_by_update;
         PRAGMA user_version = 6;",
    )
    .unwrap();
    hand.execute(
        "UPDATE jobs SET not_before = 'soon' WHERE id = ?1",
        [more[0]],
    )
    .unwrap();
    let mut store = SqliteStore::open(&path).unwrap();
    let j = store.get(more[0], 5.0).unwrap().unwrap();
    assert_eq!(j.state, JobState::Dead);
    assert!(j.reason.unwrap_or_default().contains("not_before"));
    let mut credits = BTreeMap::from([("g".to_string(), 8)]);
    let claimed = store.claim(me, &routes, &mut credits, 5.0).unwrap();
    let claimed: Vec<i64> = claimed.jobs.iter().map(|j| j.id).collect();
    assert_eq!(claimed, [more[1]]);
}

/// A running job whose owner's row was deleted by hand is taken back as a dead owner's
/// would be (its supervisor counted as having died once).
#[test]
fn a_running_job_whose_owner_is_gone_is_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let job: NewJob = serde_json::from_str(r#"{"command": ["true"], "group": "g"}"#).unwrap();
    let ids = store.submit(&vec![job; 2], 1.0).unwrap();
    let me = store.register_instance("h", 1, "t", 1.0).unwrap();
    let other = store.register_instance("h", 2, "t", 1.0).unwrap();
    let routes = [Route {
        group: "g".into(),
        matches: None,
    }];
    let mut credits = BTreeMap::from([("g".to_string(), 1)]);
    let claimed = store.claim(other, &routes, &mut credits, 2.0).unwrap().jobs;
    assert_eq!(claimed[0].id, ids[0]);
    // As the `sqlite3` shell does by default: no foreign keys.
    let hand = rusqlite::Connection::open(&path).unwrap();
    hand.pragma_update(None, "foreign_keys", false).unwrap();
    hand.execute("DELETE FROM instances WHERE id = ?1", [other])
        .unwrap();
    // Nobody is judged dead; the job comes back all the same, and only it.
    let back = store.requeue_orphans(me, &|_| false, 3.0).unwrap();
    assert_eq!(back, [ids[0]]);
    let j = store.get(ids[0], 3.0).unwrap().unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Queued, 0));
    assert!(store
        .requeue_orphans(me, &|_| false, 4.0)
        .unwrap()
        .is_empty());
}
