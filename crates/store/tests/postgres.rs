//! `PostgresStore`: the conformance tests every `JobStore` passes, the model test, and
//! what is PostgreSQL's own (claims by many connections at once, concurrent first-time
//! migration, schema versions, the listener, live-only indexes).
//!
//! Every test needs a PostgreSQL server, named by `SUPERVISOR_TEST_POSTGRES_URL`, and is
//! ignored otherwise: `scripts/with-postgres cargo nextest run -p supervisor-store
//! --run-ignored only` starts a throwaway server and runs them. Each test works in a
//! database of its own, dropped at the end, so they run in parallel.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::conformance::{conformance_tests, handles_claiming_at_once_never_double_claim};
use common::model::{op, run, smoke};
use common::*;
use proptest::prelude::*;
use supervisor_store::{
    CancelResult, JobStore, NewJob, PostgresStore, StoreError, NOTIFY_CHANNEL, PG_SCHEMA_VERSION,
};

conformance_tests!(
    common::postgres,
    #[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
);

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn many_handles_claiming_at_once_never_double_claim() {
    handles_claiming_at_once_never_double_claim(common::postgres, 6, 6_000);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn model_smoke() {
    smoke(common::postgres);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    #[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
    fn store_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(common::postgres, ops)?;
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn supervisors_starting_at_once_migrate_once() {
    for _round in 0..3 {
        let db = PgDatabase::new();
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let versions: Vec<u32> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    let barrier = Arc::clone(&barrier);
                    let url = db.url.clone();
                    scope.spawn(move || {
                        barrier.wait();
                        let mut store = PostgresStore::connect(&url).unwrap();
                        store.schema_version().unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            versions.iter().all(|v| *v == PG_SCHEMA_VERSION),
            "{versions:?}"
        );
        let mut client = db.client();
        let rows = client
            .query("SELECT version FROM supervisor_schema", &[])
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, i32>(0) as u32, PG_SCHEMA_VERSION);
        // And the result works.
        let mut store = PostgresStore::connect(&db.url).unwrap();
        assert_eq!(store.submit(&[job("x")], 1.0).unwrap().len(), 1);
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn a_newer_schema_is_refused() {
    let db = PgDatabase::new();
    // Trust authentication ignores the password, which must not show in messages.
    let url = format!("{} password=s3cret", db.url);
    let mut store = PostgresStore::connect(&url).unwrap();
    assert_eq!(store.schema_version().unwrap(), PG_SCHEMA_VERSION);
    assert!(!store.url().contains("s3cret"), "{}", store.url());
    drop(store);
    // Connecting again is fine (nothing to migrate).
    PostgresStore::connect(&url).unwrap();
    db.client()
        .execute(
            "UPDATE supervisor_schema SET version = $1",
            &[&(PG_SCHEMA_VERSION as i32 + 98)],
        )
        .unwrap();
    let err = PostgresStore::connect(&url).unwrap_err();
    match &err {
        StoreError::PgSchemaTooNew {
            found, supported, ..
        } => {
            assert_eq!(*found, PG_SCHEMA_VERSION + 98);
            assert_eq!(*supported, PG_SCHEMA_VERSION);
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("version {}", PG_SCHEMA_VERSION + 98)),
        "{msg}"
    );
    assert!(msg.contains(&format!("up to {PG_SCHEMA_VERSION}")), "{msg}");
    assert!(msg.contains(&db.name), "{msg}");
    assert!(msg.contains("password=***"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn a_missing_database_is_a_clear_error() {
    let url = pg_url_with_db(&pg_server_url(), "no_such_database_here");
    let err = PostgresStore::connect(&url).unwrap_err();
    assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("no_such_database_here"), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn only_live_jobs_are_indexed() {
    let db = PgDatabase::new();
    PostgresStore::connect(&db.url).unwrap();
    let rows = db
        .client()
        .query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs' \
             ORDER BY indexname",
            &[],
        )
        .unwrap();
    let indexes: BTreeMap<String, String> =
        rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(
        indexes.keys().map(String::as_str).collect::<Vec<_>>(),
        vec![
            "jobs_claimable",
            "jobs_live_key",
            "jobs_pkey",
            "jobs_running",
            "jobs_unrouted",
            "jobs_waiting"
        ]
    );
    for (name, def) in &indexes {
        if name != "jobs_pkey" {
            assert!(def.contains(" WHERE "), "{name} is not partial: {def}");
        }
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn submitting_the_same_keys_at_once_queues_each_once() {
    let db = PgDatabase::new();
    PostgresStore::connect(&db.url).unwrap();
    let keys: Vec<String> = (0..10).map(|k| format!("k{k}")).collect();
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let seen: Vec<BTreeMap<String, i64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = Arc::clone(&barrier);
                let (url, keys) = (db.url.clone(), keys.clone());
                scope.spawn(move || {
                    let mut store = PostgresStore::connect(&url).unwrap();
                    let mut seen = BTreeMap::new();
                    barrier.wait();
                    for round in 0..20 {
                        // Each thread and round takes the keys in another order.
                        let mut order = keys.clone();
                        order.rotate_left((t * 3 + round) % keys.len());
                        if (t + round) % 2 == 1 {
                            order.reverse();
                        }
                        let jobs: Vec<NewJob> = order
                            .iter()
                            .map(|k| NewJob {
                                key: Some(k.clone()),
                                ..job("true")
                            })
                            .collect();
                        let ids = store.submit(&jobs, 1.0).unwrap();
                        for (k, id) in order.iter().zip(ids) {
                            let first = *seen.entry(k.clone()).or_insert(id);
                            assert_eq!(first, id, "key {k}");
                        }
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for other in &seen[1..] {
        assert_eq!(other, &seen[0]);
    }
    let mut store = PostgresStore::connect(&db.url).unwrap();
    assert_eq!(store.list(None, 2.0).unwrap().len(), keys.len());
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn the_listener_wakes_on_submit_and_cancel() {
    let db = PgDatabase::new();
    let mut store = PostgresStore::connect(&db.url).unwrap();
    let mut other_host = PostgresStore::connect(&db.url).unwrap();
    let mut listener = PostgresStore::listen(&db.url).unwrap();
    let quiet = Duration::from_millis(100);
    let long = Duration::from_secs(10);

    // Nothing happened: the time runs out.
    let started = Instant::now();
    assert!(!listener.wait(quiet).unwrap());
    assert!(started.elapsed() >= quiet);

    // A submit wakes it, at once.
    let started = Instant::now();
    let id = store.submit(&[job_in("g")], 1.0).unwrap()[0];
    assert!(listener.wait(long).unwrap());
    assert!(started.elapsed() < long / 2);
    assert!(!listener.wait(quiet).unwrap(), "one submit, one wake");

    // A burst wakes it once: every notification that came is consumed.
    for _ in 0..5 {
        other_host.submit(&[job("x")], 2.0).unwrap();
    }
    // They have all committed: the wake consumes every one.
    assert!(listener.wait(long).unwrap());
    assert!(!listener.wait(quiet).unwrap(), "a burst, one wake");

    // A wait that is already under way wakes when a submit commits.
    std::thread::scope(|scope| {
        let submitter = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            other_host.submit(&[job("y")], 3.0).unwrap();
        });
        let started = Instant::now();
        assert!(listener.wait(long).unwrap());
        assert!(started.elapsed() < long / 2);
        submitter.join().unwrap();
    });

    // Cancels wake it: of a queued job, and of a running one (its owner must stop it).
    let me = instance(&mut store, 1);
    let running = store
        .claim(me, &[named("g")], &mut credits(&[("g", 1)]), 4.0)
        .unwrap()
        .jobs[0]
        .id;
    assert_eq!(running, id);
    assert!(!listener.wait(quiet).unwrap(), "a claim does not ring");
    assert_eq!(store.cancel(id, 5.0).unwrap(), CancelResult::Requested);
    assert!(listener.wait(long).unwrap());
    let queued = store.submit(&[job("z")], 6.0).unwrap()[0];
    assert!(listener.wait(long).unwrap());
    assert_eq!(store.cancel(queued, 7.0).unwrap(), CancelResult::Canceled);
    assert!(listener.wait(long).unwrap());

    // What changes nothing does not ring: an unknown or finished job's cancel, a bad
    // batch, a batch whose keys are all queued already.
    assert_eq!(store.cancel(99_999, 8.0).unwrap(), CancelResult::Unknown);
    assert!(matches!(
        store.cancel(queued, 8.0).unwrap(),
        CancelResult::AlreadyFinished(_)
    ));
    assert!(store.submit(&[NewJob::default()], 8.0).is_err());
    let keyed = NewJob {
        key: Some("k".into()),
        ..job("k")
    };
    store.submit(std::slice::from_ref(&keyed), 8.0).unwrap();
    assert!(listener.wait(long).unwrap());
    store.submit(&[keyed], 8.0).unwrap();
    assert!(!listener.wait(quiet).unwrap());

    // Anyone may ring: a plain NOTIFY on the channel.
    db.client()
        .batch_execute(&format!("NOTIFY {NOTIFY_CHANNEL}"))
        .unwrap();
    assert!(listener.wait(long).unwrap());

    // A listener whose connection is gone says so.
    db.client()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND query LIKE 'LISTEN%'",
            &[&db.name],
        )
        .unwrap();
    let started = Instant::now();
    let err = listener.wait(long).unwrap_err();
    assert!(started.elapsed() < long / 2, "{:?}", started.elapsed());
    assert!(matches!(err, StoreError::Postgres { .. }), "{err:?}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn an_instance_on_another_host_is_dead_once_silent_too_long() {
    // Two supervisors on two hosts share the queue; one stops touching its instance.
    let db = PgDatabase::new();
    let mut a = PostgresStore::connect(&db.url).unwrap();
    let mut b = PostgresStore::connect(&db.url).unwrap();
    let ia = a.register_instance("host-a", 10, "ta", 100.0).unwrap();
    let ib = b.register_instance("host-b", 10, "tb", 100.0).unwrap();
    let ids = a.submit(&[job_in("g"), job_in("g")], 100.0).unwrap();
    b.claim(ib, &[named("g")], &mut credits(&[("g", 2)]), 101.0)
        .unwrap();
    let timeout = 20.0;
    // The policy the trait documents: same host, pid check; other hosts, last_seen.
    let policy = |now: f64| {
        move |i: &supervisor_store::Instance| {
            if i.host == "host-a" {
                false // our own host: a pid check would go here
            } else {
                now - i.last_seen > timeout
            }
        }
    };
    assert!(b.touch_instance(ib, 110.0).unwrap());
    assert!(a
        .requeue_orphans(ia, &policy(125.0), 125.0)
        .unwrap()
        .is_empty());
    // host-b falls silent.
    assert_eq!(a.requeue_orphans(ia, &policy(131.0), 131.0).unwrap(), ids);
    assert!(
        !b.touch_instance(ib, 132.0).unwrap(),
        "b learns it was forgotten"
    );
    let ok = supervisor_store::OutcomeRecord {
        kind: supervisor_store::OutcomeKind::Succeeded,
        exit_code: Some(0),
        signal: None,
        start_error: None,
        reason: None,
    };
    assert!(!b
        .record_outcome(
            ids[0],
            1,
            ib,
            &ok,
            supervisor_store::AfterAttempt::Done,
            133.0
        )
        .unwrap());
    // A forgotten instance cannot claim under its old id.
    assert!(b
        .claim(ib, &[named("g")], &mut credits(&[("g", 2)]), 134.0)
        .is_err());
    let res = a
        .claim(ia, &[named("g")], &mut credits(&[("g", 2)]), 135.0)
        .unwrap();
    assert_eq!(res.jobs.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    assert!(res.jobs.iter().all(|c| c.attempt == 1));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn rows_damaged_by_hand_end_dead_naming_the_field() {
    let db = PgDatabase::new();
    let mut s = PostgresStore::connect(&db.url).unwrap();
    let me = instance(&mut s, 1);
    let cases = [
        ("timeout_s = 1e300", "timeout_s"),
        ("timeout_s = -1", "timeout_s"),
        ("command = '{\"a\": 1}'::jsonb", "command"),
        ("command = '[]'::jsonb", "command"),
        ("command = '[\"\"]'::jsonb", "command"),
        ("env = '[1]'::jsonb", "env"),
        ("env = '{\"A=B\": \"x\"}'::jsonb", "env"),
        ("max_attempts = -5", "max_attempts"),
        ("max_attempts = 99999999999", "max_attempts"),
        ("attempts = -1", "attempts"),
        ("attempts = 99999999999", "attempts"),
    ];
    let mut client = db.client();
    let mut damaged = Vec::new();
    for (set, field) in cases {
        let id = s.submit(&[job_in("g")], 1.0).unwrap()[0];
        let n = client
            .execute(&format!("UPDATE jobs SET {set} WHERE id = $1"), &[&id])
            .unwrap();
        assert_eq!(n, 1, "{set}");
        damaged.push((id, field));
    }
    let good = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    // Listing still works, whatever the rows hold.
    assert_eq!(s.list(None, 2.0).unwrap().len(), cases.len() + 1);
    let res = s
        .claim(me, &[named("g")], &mut credits(&[("g", 100)]), 2.0)
        .unwrap();
    let claimed: Vec<i64> = res.jobs.iter().map(|c| c.id).collect();
    assert_eq!(claimed, [good]);
    assert_eq!(res.refused.len(), cases.len());
    for ((id, field), refused) in damaged.iter().zip(&res.refused) {
        assert_eq!(refused.id, *id);
        let what = refused
            .reason
            .strip_prefix("the stored job cannot be run: ")
            .unwrap_or_default();
        assert!(what.starts_with(field), "{refused:?}");
        let j = s.get(*id, 3.0).unwrap().unwrap();
        assert_eq!(j.state, supervisor_store::JobState::Dead, "{field}");
        assert_eq!(j.reason.as_deref(), Some(refused.reason.as_str()));
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn tls_follows_sslmode_and_verifies_the_server_when_asked() {
    let db = PgDatabase::new();
    let tls_url = std::env::var("SUPERVISOR_TEST_POSTGRES_TLS_URL")
        .expect("SUPERVISOR_TEST_POSTGRES_TLS_URL: run through scripts/with-postgres");
    let ca = std::env::var("SUPERVISOR_TEST_POSTGRES_CA").unwrap();
    let url = |extra: &str| format!("{tls_url} dbname={} {extra}", db.name);
    let encrypted = |u: String| PostgresStore::connect(&u).unwrap().is_encrypted().unwrap();
    assert!(encrypted(url("sslmode=require")));
    assert!(
        encrypted(url("")),
        "prefer (the default) encrypts when the server can"
    );
    assert!(!encrypted(url("sslmode=disable")));
    assert!(encrypted(url(&format!(
        "sslmode=verify-full sslrootcert={ca}"
    ))));
    assert!(encrypted(url(&format!(
        "sslmode=verify-ca sslrootcert={ca}"
    ))));
    // The URL form too.
    let (host_port, _) = tls_url.split_once(" user=").unwrap();
    let port = host_port.rsplit('=').next().unwrap();
    let form = format!(
        "postgres://postgres@localhost:{port}/{}?sslmode=verify-full&sslrootcert={ca}",
        db.name
    );
    assert!(encrypted(form));
    // The server's own certificate as the root, as with a self-signed one.
    let server_cert = std::env::var("SUPERVISOR_TEST_POSTGRES_SERVER_CERT").unwrap();
    assert!(encrypted(url(&format!(
        "sslmode=verify-full sslrootcert={server_cert}"
    ))));
    // A host name the certificate does not hold: verify-ca takes the server (its chain
    // is good), verify-full does not.
    let elsewhere = |mode: &str, root: &str| {
        format!(
            "host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres dbname={} \
             sslmode={mode} sslrootcert={root}",
            db.name
        )
    };
    for root in [&ca, &server_cert] {
        assert!(encrypted(elsewhere("verify-ca", root)), "{root}");
        let err = PostgresStore::connect(&elsewhere("verify-full", root))
            .unwrap_err()
            .to_string();
        assert!(err.contains("certificate"), "{err}");
    }
    // A server the roots do not vouch for is refused, and the error says why.
    let err = PostgresStore::connect(&url("sslmode=verify-full"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    assert!(!err.contains("password="), "{err}");
    let err = PostgresStore::connect(&url("sslmode=verify-full sslrootcert=/nonexistent.pem"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sslrootcert /nonexistent.pem"), "{err}");
    let err = PostgresStore::connect(&url("sslmode=always"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sslmode \"always\""), "{err}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn values_no_query_can_use_are_refused_and_the_old_ones_end_dead() {
    let db = PgDatabase::new();
    let mut store = PostgresStore::connect(&db.url).unwrap();
    let ids = store.submit(&[job("g"), job("g"), job("g")], 1.0).unwrap();
    let mut client = db.client();
    // From now on, a hand cannot write them.
    for set in [
        "waiting_on = -1",
        "not_before = 'Infinity'",
        "created_at = 'NaN'",
    ] {
        let e = client
            .execute(&format!("UPDATE jobs SET {set} WHERE id = $1"), &[&ids[0]])
            .expect_err(set);
        assert!(
            format!("{e:?}").contains("jobs_values_usable"),
            "{set}: {e:?}"
        );
    }
    // Written before the check (here: with it dropped, and the schema back to before
    // the version that brought it, the one before the last), they end the job when the
    // store is opened again.
    client
        .batch_execute(
            "ALTER TABLE jobs DROP CONSTRAINT jobs_values_usable;
             UPDATE supervisor_schema SET version = version - 2;",
        )
        .unwrap();
    client
        .execute("UPDATE jobs SET waiting_on = -1 WHERE id = $1", &[&ids[1]])
        .unwrap();
    let mut store = PostgresStore::connect(&db.url).unwrap();
    assert_eq!(store.schema_version().unwrap(), PG_SCHEMA_VERSION);
    let j = store.get(ids[1], 2.0).unwrap().unwrap();
    assert_eq!(j.state, supervisor_store::JobState::Dead);
    assert!(
        j.reason.as_deref().unwrap_or("").contains("waiting_on"),
        "{:?}",
        j.reason
    );
    assert_eq!(
        store.get(ids[0], 2.0).unwrap().unwrap().state,
        supervisor_store::JobState::Queued
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn the_last_migration_links_every_dependency_a_job_names() {
    // The version before it linked only the dependencies a job waited on: one canceled
    // at submit for a dependency already dead had none.
    let db = PgDatabase::new();
    let mut store = PostgresStore::connect(&db.url).unwrap();
    let dep = store.submit(&[job("g")], 1.0).unwrap()[0];
    let mut dependent = job("g");
    dependent.after = vec![dep];
    let id = store.submit(&[dependent], 1.0).unwrap()[0];
    let mut client = db.client();
    client
        .batch_execute(
            "DELETE FROM job_deps;
             UPDATE supervisor_schema SET version = version - 1;",
        )
        .unwrap();
    let store = PostgresStore::connect(&db.url).unwrap();
    drop(store);
    let rows = client.query("SELECT job, dep FROM job_deps", &[]).unwrap();
    let linked: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(linked, [(id, dep)]);
}
