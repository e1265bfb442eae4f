//! Unit tests of the PostgreSQL store: URLs and TLS settings, connect errors, and the plans
//! of its hot queries (against a server: `scripts/with-postgres`).

use postgres::{Client, NoTls};

use super::claim_sql::{BACKLOG, CLAIM, CLAIM_PLANNER, SET_ROUTES, UNROUTED};
use super::schema::MIGRATIONS;
use super::*;
use supervisor_config::postgres_url::{tls_settings, Tls};

#[test]
fn passwords_are_hidden() {
    for (url, shown) in [
        (
            "postgres://app:s3cret@db:5432/jobs",
            "postgres://app:***@db:5432/jobs",
        ),
        ("postgres://app@db/jobs", "postgres://app@db/jobs"),
        (
            "postgresql://app:p@ss@db/jobs",
            "postgresql://app:***@db/jobs",
        ),
        (
            "postgres://db/jobs?user=a&password=x&sslmode=require",
            "postgres://db/jobs?user=a&password=***&sslmode=require",
        ),
        (
            "host=db user=app password=secret dbname=jobs",
            "host=db user=app password=*** dbname=jobs",
        ),
        (
            "host=db password='a b\\' c' dbname=jobs",
            "host=db password=*** dbname=jobs",
        ),
        ("host=/tmp/pg user=postgres", "host=/tmp/pg user=postgres"),
    ] {
        assert_eq!(redact_password(url), shown, "{url}");
    }
}

#[test]
fn tls_settings_are_taken_out_of_both_forms_of_url() {
    let (rest, tls) =
        tls_settings("host=db user=app sslmode=verify-full sslrootcert='/etc/a b.pem'").unwrap();
    assert_eq!(rest, "host=db user=app");
    assert_eq!(tls, Tls::VerifyFull(Some("/etc/a b.pem".into())));
    let (rest, tls) =
        tls_settings("postgres://app@db/jobs?sslmode=require&application_name=x").unwrap();
    assert_eq!(rest, "postgres://app@db/jobs?application_name=x");
    assert_eq!(tls, Tls::Require);
    let (rest, tls) = tls_settings("postgres://db/jobs?sslmode=verify-ca").unwrap();
    assert_eq!(
        (rest.as_str(), tls),
        ("postgres://db/jobs", Tls::VerifyCa(None))
    );
    assert_eq!(tls_settings("host=db").unwrap().1, Tls::Prefer);
    assert_eq!(
        tls_settings("host=db sslmode=require sslrootcert=/ca.pem")
            .unwrap()
            .1,
        Tls::VerifyCa(Some("/ca.pem".into())),
        "require with a root certificate verifies against it, as libpq"
    );
    assert_eq!(
        tls_settings("host=db sslmode=disable").unwrap().1,
        Tls::Disable
    );
    let e = tls_settings("host=db sslmode=always").unwrap_err();
    assert!(e.contains("\"always\""), "{e}");
    assert!(tls_settings("host=db password='x").is_err());
    // Other quoted values are kept as written.
    assert_eq!(
        tls_settings("host=db password='a b' sslmode=require")
            .unwrap()
            .0,
        "host=db password='a b'"
    );
}

#[test]
fn the_schema_versions_are_counted() {
    assert_eq!(PG_SCHEMA_VERSION as usize, MIGRATIONS.len());
}

#[test]
fn connect_errors_name_the_url_without_its_password() {
    // Nothing listens on port 1: refused at once.
    let url = "postgres://app:s3cret@127.0.0.1:1/jobs";
    for err in [
        PostgresStore::connect(url).unwrap_err(),
        PostgresStore::listen(url).unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("postgres://app:***@127.0.0.1:1/jobs"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }
    let err = PostgresStore::connect("host=db port=notanumber password=s3cret")
        .unwrap_err()
        .to_string();
    assert!(err.contains("password=***"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// The plan of `sql` with `params` as a prepared statement (so that `plan_cache_mode`
/// applies), one step a line.
fn plan(client: &mut Client, sql: &str, args: &[String]) -> String {
    client
        .batch_execute(&format!("DEALLOCATE ALL; PREPARE p AS {sql}"))
        .unwrap();
    let execute = if args.is_empty() {
        "EXPLAIN EXECUTE p".to_string()
    } else {
        format!("EXPLAIN EXECUTE p({})", args.join(", "))
    };
    client
        .query(&execute, &[])
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// With a long history of finished jobs, the hot queries read live jobs through their
/// partial indexes, whether PostgreSQL plans them for the parameters at hand or once
/// for all (as it may for a prepared statement used often).
#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
fn hot_queries_use_the_live_indexes() {
    let server = std::env::var("SUPERVISOR_TEST_POSTGRES_URL")
        .expect("SUPERVISOR_TEST_POSTGRES_URL is not set: run through scripts/with-postgres");
    let name = format!("supervisor_unit_{}", std::process::id());
    let mut admin = Client::connect(&server, NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let url = format!("{server} dbname={name}");
    let result = std::panic::catch_unwind(|| {
        let mut store = PostgresStore::connect(&url).unwrap();
        let me = store.register_instance("h", 1, "t", 0.0).unwrap();
        // 50,000 finished jobs, a few live ones.
        store
            .client
            .batch_execute(
                "INSERT INTO jobs (state, command, tags, env, created_at, attempts, \
                     last_outcome, finished_at, run_group) \
                 SELECT 'succeeded', '[\"true\"]', '{\"k\": \"v\"}', '{}', 1, 1, \
                     'succeeded', 2, 'g' FROM generate_series(1, 50000)",
            )
            .unwrap();
        let routes = [
            Route {
                group: "g".into(),
                matches: None,
            },
            Route {
                group: "t".into(),
                matches: Some([("k".to_string(), vec!["v".to_string()])].into()),
            },
        ];
        let mut jobs = vec![NewJob::new(["true"]); 20];
        jobs[0].group = Some("g".into());
        store.submit(&jobs, 3.0).unwrap();
        let mut credits = BTreeMap::from([("g".to_string(), 1), ("t".to_string(), 1)]);
        store.claim(me, &routes, &mut credits, 4.0).unwrap();
        let groups = "ARRAY['g', 't']::text[]".to_string();
        let claim_planner = CLAIM_PLANNER.replace("SET LOCAL", "SET");
        let default_planner = "RESET enable_seqscan; RESET enable_bitmapscan; \
                               RESET enable_sort; RESET enable_hashjoin; \
                               RESET enable_mergejoin";
        // Without statistics (a new table), then with them, then with those of a
        // deep queue (where a generic plan once hashed the whole table per claim).
        for stats in ["none", "analyzed", "deep"] {
            if stats == "analyzed" {
                store.client.batch_execute("ANALYZE jobs").unwrap();
            }
            if stats == "deep" {
                store
                    .client
                    .batch_execute(
                        "INSERT INTO jobs (state, named_group, command, tags, env, \
                         created_at, route, routed) \
                         SELECT 'queued', 'g', '[\"true\"]', '{}', '{}', 1.0, 'g', TRUE \
                         FROM generate_series(1, 100000); ANALYZE jobs",
                    )
                    .unwrap();
            }
            for mode in ["force_custom_plan", "force_generic_plan"] {
                let mode = format!("{stats}, {mode}");
                let client = &mut store.client;
                client
                    .batch_execute(&format!(
                        "SET plan_cache_mode = {}",
                        mode.rsplit(' ').next().unwrap()
                    ))
                    .unwrap();

                // A claim's queries, planned as a claim's transaction sets the planner.
                client.batch_execute(&claim_planner).unwrap();
                let p = plan(
                    client,
                    CLAIM,
                    &[
                        me.to_string(),
                        "5.0".into(),
                        groups.clone(),
                        "ARRAY[5, 5]::bigint[]".into(),
                    ],
                );
                assert!(p.contains("Index Scan using jobs_claimable"), "{mode}: {p}");
                assert!(
                    !p.contains("Seq Scan on jobs") && !p.contains("Sort"),
                    "{mode}: {p}"
                );
                // The picked rows are updated through the primary key, one by one.
                assert!(
                    !p.contains("Hash Join") && !p.contains("Merge Join"),
                    "{mode}: {p}"
                );
                let p = plan(client, BACKLOG, &["5.0".into(), groups.clone()]);
                assert!(
                    p.contains("using jobs_claimable") && p.contains("using jobs_waiting"),
                    "{mode}: {p}"
                );
                assert!(!p.contains("Seq Scan"), "{mode}: {p}");
                let p = plan(client, UNROUTED, &["5".into()]);
                assert!(p.contains("jobs_unrouted"), "{mode}: {p}");
                assert!(!p.contains("Seq Scan"), "{mode}: {p}");
                // Routing jobs (the claim's new ones, a reroute's whole queue): by
                // the primary key.
                let p = plan(
                    client,
                    SET_ROUTES,
                    &["ARRAY[1, 2]::bigint[]".into(), groups.clone()],
                );
                assert!(p.contains("jobs_pkey"), "{mode}: {p}");
                assert!(!p.contains("Seq Scan on jobs"), "{mode}: {p}");
                let p = plan(client, MATERIALISE_RETRIES, &["5.0".into()]);
                assert!(p.contains("jobs_waiting"), "{mode}: {p}");
                assert!(!p.contains("Seq Scan"), "{mode}: {p}");

                // The others', as they are planned.
                client.batch_execute(default_planner).unwrap();
                if stats == "analyzed" {
                    let p = plan(client, RETRY_DUE, &["5.0".into()]);
                    assert!(!p.contains("Seq Scan"), "{mode}: {p}");
                }
                let owner = me.to_string();
                for (sql, args) in [
                    (TAKE_BACK_ALL.to_string(), vec![owner.clone(), "5.0".into()]),
                    (
                        "SELECT id, attempts FROM jobs WHERE owner = $1 \
                         AND state = 'running' AND cancel_requested ORDER BY id"
                            .to_string(),
                        vec![owner.clone()],
                    ),
                    // The foreign key's check when an instance goes.
                    (
                        "SELECT 1 FROM ONLY jobs x WHERE owner = $1 FOR KEY SHARE OF x".to_string(),
                        vec![owner.clone()],
                    ),
                ] {
                    let p = plan(client, &sql, &args);
                    assert!(p.contains("jobs_running"), "{mode}: {sql}: {p}");
                }
            }
        }
    });
    drop(admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
