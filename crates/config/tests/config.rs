//! Reading configs: every kind of bad config is reported with its file and key path,
//! defaults follow the contract, paths resolve against the config's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use supervisor_config::{load, parse, parse_as, route, Config, Route, StoreConfig};
use supervisor_core::backoff::Backoff;
use supervisor_core::spec::{defaults, OnExhausted};

const FILE: &str = "/etc/sup/supervisor.json";

fn ok(text: &str) -> Config {
    match parse(text, Path::new(FILE)) {
        Ok(config) => config,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, Path::new(FILE)) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(e) => e.errors,
    }
}

/// The single error of `text`, without the leading file name.
fn error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0]
        .strip_prefix(&format!("{FILE}: "))
        .unwrap_or_else(|| panic!("does not name the file: {}", errors[0]))
        .to_string()
}

/// A config of one group `a` with `group` merged into it and `top` merged at the top.
fn with(top: &str, group: &str) -> String {
    let sep = |s: &str| if s.is_empty() { "" } else { ", " };
    format!(
        r#"{{"groups": [{{"name": "a"{}{group}}}]{}{top}}}"#,
        sep(group),
        sep(top)
    )
}

// ---- JSON syntax ----

#[test]
fn json_syntax_error_names_line_and_column() {
    let text = "{\n  \"groups\": [\n    {\"name\": \"a\",}\n  ]\n}\n";
    assert_eq!(errors(text), [format!("{FILE}:3:18: trailing comma")]);
    assert_eq!(
        errors(""),
        [format!("{FILE}:1:1: EOF while parsing a value")]
    );
}

#[test]
fn a_syntax_error_at_the_start_of_a_line_is_at_column_1() {
    assert_eq!(
        errors("{\"groups\": [{\"name\": \"a\"}],\n"),
        [format!("{FILE}:2:1: EOF while parsing a value")]
    );
    assert_eq!(
        errors("{\"groups\": [{\"name\": \"a\"}]}\n\nx"),
        [format!("{FILE}:3:1: trailing characters")]
    );
}

#[test]
fn a_config_that_is_not_utf8_is_refused_at_its_first_bad_byte() {
    let dir = Scratch::new("utf8");
    let path = dir.0.join("c.json");
    std::fs::write(&path, b"{\"groups\": [\n  {\"name\": \"caf\xe9\"}]}").unwrap();
    assert_eq!(
        load(&path).unwrap_err().errors,
        [format!(
            "{}:2:16: invalid UTF-8 (byte 0xe9)",
            path.display()
        )]
    );
    std::fs::write(&path, b"\xef\xbb").unwrap();
    assert_eq!(
        load(&path).unwrap_err().errors,
        [format!(
            "{}:1:1: invalid UTF-8 (the text ends inside a character)",
            path.display()
        )]
    );
}

#[test]
fn a_byte_order_mark_at_the_top_of_a_config_is_ignored() {
    let dir = Scratch::new("bom");
    let path = dir.0.join("c.json");
    let text =
        "\u{feff}{\"state_dir\": \"st\", \"groups\": [{\"name\": \"a\", \"max_workers\": 1}]}";
    std::fs::write(&path, text).unwrap();
    let config = load(&path).unwrap();
    assert_eq!(config.state_dir, dir.0.join("st"));
    assert_eq!(
        supervisor_config::locate(&path).unwrap().state_dir,
        dir.0.join("st")
    );
}

#[test]
fn duplicate_json_key_is_a_syntax_error() {
    let text = "{\"groups\": [{\"name\": \"a\",\n \"max_workers\": 1,\n \"max_workers\": 2}]}";
    let errors = errors(text);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with(&format!("{FILE}:3:")), "{errors:?}");
    assert!(
        errors[0].ends_with(": duplicate key \"max_workers\""),
        "{errors:?}"
    );
}

// ---- unknown keys ----

#[test]
fn liveness_timings_leave_room_for_a_touch_and_clock_skew() {
    assert_eq!(
        error(&with(
            r#""instances": {"touch_every_s": 10, "dead_after_s": 21}"#,
            ""
        )),
        "instances.dead_after_s: must be at least 2 × touch_every_s + 2 (22): a supervisor \
         fences itself after dead_after_s - touch_every_s - 2 s without a touch, and needs \
         one touch in that time; found 21"
    );
    let c = parse(
        &with(
            r#""instances": {"touch_every_s": 10, "dead_after_s": 22}"#,
            "",
        ),
        Path::new(FILE),
    )
    .unwrap();
    assert_eq!(
        c.instances.fence_after(),
        std::time::Duration::from_secs(10)
    );
    let c = parse(&with("", ""), Path::new(FILE)).unwrap();
    assert_eq!(
        c.instances.fence_after(),
        std::time::Duration::from_secs(23)
    );
}

#[test]
fn retention_needs_a_limit_and_takes_each() {
    assert_eq!(
        error(&with(r#""retention": {}"#, "")),
        "retention: set finished_max_age_s, finished_max_count or both \
         (without a limit, leave retention out: nothing is deleted)"
    );
    assert_eq!(
        error(&with(r#""retention": {"finished_max_age_s": 0}"#, "")),
        "retention.finished_max_age_s: must be > 0 and <= 1000000000, found 0"
    );
    for ok in [
        r#""retention": {"finished_max_age_s": 60}"#,
        r#""retention": {"finished_max_count": 0}"#,
    ] {
        parse(&with(ok, ""), Path::new(FILE)).unwrap();
    }
}

#[test]
fn unknown_top_level_key() {
    assert_eq!(
        error(&with(r#""colour": "red""#, "")),
        "colour: unknown key (expected one of: events, grabber, groups, heartbeat, \
         http, instances, retention, shutdown_grace_s, state_dir, store)"
    );
}

#[test]
fn unknown_nested_keys() {
    assert_eq!(
        error(&with("", r#""colour": "red""#)),
        "groups[0].colour: unknown key (expected one of: cpu_max, group, job_timeout_s, match, \
         max_attempts, max_workers, memory_max_bytes, name, nice, restart, retry_backoff, \
         rlimits, user)"
    );
    assert_eq!(
        error(&with(r#""grabber": {"error_backoff": {"jiter": 0.5}}"#, "")),
        "grabber.error_backoff.jiter: unknown key (expected one of: initial_s, jitter, max_s)"
    );
    assert_eq!(
        error(&with("", r#""restart": {"backoff": {"max": 3}}"#)),
        "groups[0].restart.backoff.max: unknown key (expected one of: initial_s, jitter, max_s)"
    );
    assert_eq!(
        error(&with(r#""store": {"sqlite": {"file": "x.db"}}"#, "")),
        "store.sqlite.file: unknown key (expected one of: path)"
    );
}

// ---- wrong types ----

#[test]
fn wrong_types() {
    assert_eq!(
        error(&with(r#""grabber": {"poll_interval_s": "1"}"#, "")),
        "grabber.poll_interval_s: expected a number, found a string"
    );
    assert_eq!(
        error(&with("", r#""max_workers": "4""#)),
        "groups[0].max_workers: expected an integer, found a string"
    );
    assert_eq!(
        error(&with("", r#""max_workers": 2.5"#)),
        "groups[0].max_workers: expected an integer, found 2.5"
    );
    assert_eq!(
        error(r#"{"groups": {"name": "a"}}"#),
        "groups: expected an array, found an object"
    );
    assert_eq!(
        error(&with(r#""heartbeat": [5, 20]"#, "")),
        "heartbeat: expected an object, found an array"
    );
    assert_eq!(
        error(&with("", r#""job_timeout_s": true"#)),
        "groups[0].job_timeout_s: expected a number or null, found a boolean"
    );
    assert_eq!(
        error(&with(r#""state_dir": null"#, "")),
        "state_dir: expected a string, found null"
    );
    assert_eq!(
        error(r#"[{"name": "a"}]"#),
        "expected an object, found an array"
    );
}

#[test]
fn wrong_types_inside_match() {
    assert_eq!(
        error(&with("", r#""match": {"arch": ["x86_64", 3]}"#)),
        "groups[0].match.arch[1]: expected a string, found 3"
    );
    assert_eq!(
        error(&with("", r#""match": {"arch": 64}"#)),
        "groups[0].match.arch: expected a string or an array, found 64"
    );
    assert_eq!(
        error(&with("", r#""match": {"arch": []}"#)),
        "groups[0].match.arch: must not be empty"
    );
    assert_eq!(
        error(&with("", r#""match": ["arch"]"#)),
        "groups[0].match: expected an object, found an array"
    );
    assert_eq!(
        error(&with("", r#""match": {"cpu arch": [1]}"#)),
        "groups[0].match[\"cpu arch\"][0]: expected a string, found 1"
    );
}

// ---- ranges ----

#[test]
fn out_of_range_numbers_state_the_range() {
    let cases = [
        (
            with(r#""grabber": {"error_backoff": {"jitter": 1.5}}"#, ""),
            "grabber.error_backoff.jitter: must be >= 0 and <= 1, found 1.5",
        ),
        (
            with(r#""grabber": {"poll_interval_s": 0}"#, ""),
            "grabber.poll_interval_s: must be > 0 and <= 1000000000, found 0",
        ),
        (
            with("", r#""max_workers": -1"#),
            "groups[0].max_workers: must be >= 0 and <= 10000, found -1",
        ),
        (
            with("", r#""max_attempts": 0"#),
            "groups[0].max_attempts: must be >= 1 and <= 1000000, found 0",
        ),
        (
            with("", r#""job_timeout_s": 0"#),
            "groups[0].job_timeout_s: must be > 0 and <= 1000000000, found 0",
        ),
        (
            with("", r#""retry_backoff": {"initial_s": -0.5}"#),
            "groups[0].retry_backoff.initial_s: must be >= 0 and <= 1000000000, found -0.5",
        ),
        (
            with("", r#""restart": {"period_s": 0}"#),
            "groups[0].restart.period_s: must be > 0 and <= 1000000000, found 0",
        ),
        (
            with("", r#""restart": {"max_restarts": -1}"#),
            "groups[0].restart.max_restarts: must be >= 0, found -1",
        ),
        (
            with(r#""events": {"rotate_bytes": 100}"#, ""),
            "events.rotate_bytes: must be >= 4096, found 100",
        ),
        (
            with(r#""events": {"keep": -2}"#, ""),
            "events.keep: must be >= 0, found -2",
        ),
        (
            with(r#""heartbeat": {"interval_s": 0}"#, ""),
            "heartbeat.interval_s: must be > 0 and <= 1000000000, found 0",
        ),
        (
            with(r#""shutdown_grace_s": -1"#, ""),
            "shutdown_grace_s: must be >= 0 and <= 1000000000, found -1",
        ),
        (
            with(r#""shutdown_grace_s": 1e12"#, ""),
            "shutdown_grace_s: must be >= 0 and <= 1000000000, found 1000000000000.0",
        ),
        (
            with("", r#""max_workers": 4294967296"#),
            "groups[0].max_workers: must be >= 0 and <= 10000, found 4294967296",
        ),
        (
            with(r#""events": {"rotate_bytes": 18446744073709551616}"#, ""),
            "events.rotate_bytes: expected an integer, found 1.8446744073709552e+19",
        ),
        (
            with(r#""state_dir": """#, ""),
            "state_dir: must not be empty",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(error(&text), want, "{text}");
    }
}

#[test]
fn max_s_must_not_be_below_initial_s() {
    assert_eq!(
        error(&with(
            "",
            r#""retry_backoff": {"initial_s": 10, "max_s": 5}"#
        )),
        "groups[0].retry_backoff.max_s: must be at least initial_s (10), found 5"
    );
    assert_eq!(
        error(&with(r#""grabber": {"error_backoff": {"max_s": 0.1}}"#, "")),
        "grabber.error_backoff.max_s: must be at least initial_s (0.5, its default), found 0.1"
    );
    assert_eq!(
        error(&with("", r#""restart": {"backoff": {"initial_s": 60}}"#)),
        "groups[0].restart.backoff.initial_s: must be at most max_s (30, its default), found 60"
    );
    // Equal is fine: a constant delay.
    ok(&with(
        "",
        r#""retry_backoff": {"initial_s": 5, "max_s": 5}"#,
    ));
}

#[test]
fn heartbeat_timeout_must_exceed_interval() {
    assert_eq!(
        error(&with(
            r#""heartbeat": {"interval_s": 5, "timeout_s": 5}"#,
            ""
        )),
        "heartbeat.timeout_s: must be more than interval_s (5), found 5"
    );
    assert_eq!(
        error(&with(r#""heartbeat": {"interval_s": 30}"#, "")),
        "heartbeat.interval_s: must be less than timeout_s (20, its default), found 30"
    );
}

// ---- groups ----

#[test]
fn duplicate_group_name() {
    let text = r#"{"groups": [{"name": "x"}, {"name": "y"}, {"name": "x"}, {"name": "x"}]}"#;
    assert_eq!(
        errors(text),
        [
            format!("{FILE}: groups[2].name: duplicate group name \"x\" (also groups[0])"),
            format!("{FILE}: groups[3].name: duplicate group name \"x\" (also groups[0])"),
        ]
    );
}

#[test]
fn group_name_is_required_and_not_empty() {
    assert_eq!(
        error(r#"{"groups": [{"max_workers": 1}]}"#),
        "groups[0].name: required"
    );
    assert_eq!(
        error(r#"{"groups": [{"name": ""}]}"#),
        "groups[0].name: must not be empty"
    );
}

#[test]
fn missing_groups() {
    assert_eq!(error("{}"), "groups: required");
    assert_eq!(error(r#"{"state_dir": "s"}"#), "groups: required");
}

#[test]
fn empty_groups() {
    assert_eq!(error(r#"{"groups": []}"#), "groups: must not be empty");
}

// ---- enums ----

#[test]
fn bad_on_exhausted_names_the_accepted_values() {
    assert_eq!(
        error(&with("", r#""restart": {"on_exhausted": "restart"}"#)),
        "groups[0].restart.on_exhausted: expected one of \"exit\", \"disable\", found \"restart\""
    );
    assert_eq!(
        error(&with("", r#""restart": {"on_exhausted": 3}"#)),
        "groups[0].restart.on_exhausted: expected one of \"exit\", \"disable\", found 3"
    );
}

// ---- store ----

#[test]
fn store_with_both_kinds() {
    assert_eq!(
        error(&with(
            r#""store": {"sqlite": {}, "postgres": {"url": "postgres://db/jobs"}}"#,
            ""
        )),
        "store: expected exactly one of: postgres, sqlite; found postgres and sqlite"
    );
}

#[test]
fn store_of_unknown_kind() {
    assert_eq!(
        error(&with(r#""store": {"mysql": {"url": "x"}}"#, "")),
        "store.mysql: unknown key (expected one of: postgres, sqlite)"
    );
    assert_eq!(
        error(&with(r#""store": {}"#, "")),
        "store: expected exactly one of: postgres, sqlite; found none"
    );
    assert_eq!(
        error(&with(r#""store": "sqlite""#, "")),
        "store: expected an object, found a string"
    );
}

#[test]
fn postgres_store_needs_a_url() {
    assert_eq!(
        error(&with(r#""store": {"postgres": {}}"#, "")),
        "store.postgres.url: required"
    );
    assert_eq!(
        error(&with(r#""store": {"postgres": {"url": ""}}"#, "")),
        "store.postgres.url: must not be empty"
    );
    assert_eq!(
        error(&with(r#""store": {"postgres": {"url": 5432}}"#, "")),
        "store.postgres.url: expected a string, found 5432"
    );
    assert_eq!(
        error(&with(
            r#""store": {"postgres": {"url": "postgres://db/j", "pool": 4}}"#,
            ""
        )),
        "store.postgres.pool: unknown key (expected one of: url)"
    );
}

#[test]
fn postgres_store() {
    let config = ok(&with(
        r#""store": {"postgres": {"url": "postgres://app:pw@db/jobs"}}"#,
        "",
    ));
    assert_eq!(
        config.store,
        StoreConfig::Postgres {
            url: "postgres://app:pw@db/jobs".into()
        }
    );
    assert_eq!(
        config.store.describe(),
        "postgres postgres://app:***@db/jobs"
    );
}

// ---- all at once ----

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"{
        "colour": 1,
        "store": {"postgres": {}},
        "grabber": {"poll_interval_s": -1, "error_backoff": {"jitter": "lots"}},
        "groups": [
            {"name": "a", "max_workers": "two", "restart": {"on_exhausted": "panic"}},
            {"max_workers": 1, "oops": true},
            {"name": "a", "retry_backoff": {"initial_s": 9, "max_s": 3}}
        ],
        "events": {"rotate_bytes": 1},
        "heartbeat": {"interval_s": 10, "timeout_s": 1}
    }"#;
    let mut got = errors(text);
    got.sort();
    let mut want: Vec<String> = [
        "colour: unknown key (expected one of: events, grabber, groups, heartbeat, http, instances, retention, shutdown_grace_s, state_dir, store)",
        "store.postgres.url: required",
        "grabber.poll_interval_s: must be > 0 and <= 1000000000, found -1",
        "grabber.error_backoff.jitter: expected a number, found a string",
        "groups[0].max_workers: expected an integer, found a string",
        "groups[0].restart.on_exhausted: expected one of \"exit\", \"disable\", found \"panic\"",
        "groups[1].name: required",
        "groups[1].oops: unknown key (expected one of: cpu_max, group, job_timeout_s, match, max_attempts, max_workers, memory_max_bytes, name, nice, restart, retry_backoff, rlimits, user)",
        "groups[2].name: duplicate group name \"a\" (also groups[0])",
        "groups[2].retry_backoff.max_s: must be at least initial_s (9), found 3",
        "events.rotate_bytes: must be >= 4096, found 1",
        "heartbeat.timeout_s: must be more than interval_s (10), found 1",
    ]
    .iter()
    .map(|e| format!("{FILE}: {e}"))
    .collect();
    want.sort();
    assert_eq!(got, want);

    let display = parse(text, Path::new(FILE)).unwrap_err().to_string();
    assert_eq!(display.lines().count(), want.len(), "one problem a line");
}

// ---- defaults ----

#[test]
fn defaults_are_the_contracts() {
    let config = ok(r#"{"groups": [{"name": "a"}]}"#);
    let dir = Path::new("/etc/sup");
    assert_eq!(config.path, Path::new(FILE));
    assert_eq!(config.state_dir, dir.join("state"));
    assert_eq!(
        config.store,
        StoreConfig::Sqlite {
            path: dir.join("state/jobs.db")
        }
    );
    assert_eq!(config.grabber.poll_interval, Duration::from_secs(1));
    assert_eq!(
        config.grabber.error_backoff,
        Backoff::from_secs(0.5, 30.0, 0.75)
    );
    let group = &config.groups[0];
    assert_eq!(group.name, "a");
    assert_eq!(group.max_workers, 4);
    assert_eq!(group.matches, None);
    assert_eq!(group.job_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(group.max_attempts, 3);
    assert_eq!(group.retry_backoff, Backoff::from_secs(1.0, 300.0, 0.75));
    assert_eq!(group.restart.backoff, Backoff::from_secs(0.1, 30.0, 0.75));
    assert_eq!(group.restart.max_restarts, 5);
    assert_eq!(group.restart.period, Duration::from_secs(60));
    assert_eq!(group.restart.on_exhausted, OnExhausted::Exit);
    assert_eq!(config.events.path, dir.join("state/events.jsonl"));
    assert_eq!(config.events.rotate_bytes, 104_857_600);
    assert_eq!(config.events.keep, 5);
    assert_eq!(config.heartbeat.interval, Duration::from_secs(5));
    assert_eq!(config.heartbeat.timeout, Duration::from_secs(20));
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));

    // ... and the core's idea of the defaults agrees.
    assert_eq!(
        config.spec(false),
        defaults::spec(vec![defaults::group("a", 4)])
    );
}

#[test]
fn partial_objects_keep_the_other_defaults() {
    let config = ok(&with(
        r#""heartbeat": {"timeout_s": 60}"#,
        r#""restart": {"max_restarts": 1, "backoff": {"jitter": 0}}"#,
    ));
    assert_eq!(config.heartbeat.interval, Duration::from_secs(5));
    assert_eq!(config.heartbeat.timeout, Duration::from_secs(60));
    let restart = &config.groups[0].restart;
    assert_eq!(restart.max_restarts, 1);
    assert_eq!(restart.backoff, Backoff::from_secs(0.1, 30.0, 0.0));
    assert_eq!(restart.period, Duration::from_secs(60));
}

#[test]
fn contract_example_reads_as_written() {
    // As a supervisor running as root reads it: its first group runs jobs as `nobody`.
    let path = repo_root().join("examples/full.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = parse_as(&text, &path, 0).unwrap();
    let group = config.group("x86_64").unwrap();
    assert_eq!(group.max_workers, 4);
    let run_as = group.process.run_as.as_ref().unwrap();
    assert_eq!(run_as.user, "nobody");
    assert_eq!(group.process.rlimits.nofile, Some(4096));
    assert_eq!(group.process.nice, Some(5));
    assert_eq!(group.process.cpu_max, Some(2.0));
    assert_eq!(
        group.matches,
        Some(BTreeMap::from([(
            "arch".to_string(),
            vec!["x86_64".to_string(), "i386".to_string()]
        )]))
    );
    let arm = config.group("arm").unwrap();
    assert_eq!(arm.job_timeout, None, "null is no timeout");
    assert_eq!(arm.restart.on_exhausted, OnExhausted::Disable);
    assert_eq!(
        arm.matches.as_ref().unwrap()["arch"],
        ["aarch64"],
        "a single string is a one-element list"
    );
}

// ---- paths ----

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let config = ok(&with(
        r#""state_dir": "./var", "store": {"sqlite": {"path": "db/jobs.db"}},
           "events": {"path": "../log/events.jsonl"}"#,
        "",
    ));
    assert_eq!(config.state_dir, Path::new("/etc/sup/var"));
    assert_eq!(
        config.store,
        StoreConfig::Sqlite {
            path: "/etc/sup/db/jobs.db".into()
        }
    );
    assert_eq!(
        config.events.path,
        Path::new("/etc/sup/../log/events.jsonl")
    );

    let config = ok(&with(
        r#""state_dir": "/var/lib/sup", "events": {"path": "/var/log/sup.jsonl"}"#,
        "",
    ));
    assert_eq!(config.state_dir, Path::new("/var/lib/sup"));
    assert_eq!(config.events.path, Path::new("/var/log/sup.jsonl"));
}

#[test]
fn a_relative_config_path_is_made_absolute() {
    let config = parse(r#"{"groups": [{"name": "a"}]}"#, Path::new("conf/sup.json")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(config.path, cwd.join("conf/sup.json"));
    assert_eq!(config.state_dir, cwd.join("conf/state"));
}

#[test]
fn default_paths_follow_state_dir() {
    let config = ok(&with(r#""state_dir": "/var/lib/sup""#, ""));
    assert_eq!(
        config.store,
        StoreConfig::Sqlite {
            path: "/var/lib/sup/jobs.db".into()
        }
    );
    assert_eq!(config.events.path, Path::new("/var/lib/sup/events.jsonl"));

    let config = ok(&with(r#""state_dir": "run", "store": {"sqlite": {}}"#, ""));
    assert_eq!(config.store.describe(), "sqlite /etc/sup/run/jobs.db");
    assert_eq!(config.events.path, Path::new("/etc/sup/run/events.jsonl"));
}

#[test]
fn the_events_file_and_the_store_collide_with_nothing_the_supervisor_keeps() {
    let cases = [
        (
            r#""events": {"path": "state/jobs.db"}"#,
            "events.path: /etc/sup/state/jobs.db is also the SQLite store \
             (<state_dir>/jobs.db, store.sqlite.path's default)",
        ),
        (
            r#""events": {"path": "state/supervisor.pid"}"#,
            "events.path: /etc/sup/state/supervisor.pid is also the pidfile \
             (<state_dir>/supervisor.pid)",
        ),
        (
            r#""state_dir": "/srv/st", "events": {"path": "/srv/st/./outcomes.journal"}"#,
            "events.path: /srv/st/outcomes.journal is also the outcomes journal \
             (<state_dir>/outcomes.journal)",
        ),
        (
            r#""events": {"path": "state/supervisor.events"}"#,
            "events.path: /etc/sup/state/supervisor.events is also the note of where the \
             running supervisor writes its events (<state_dir>/supervisor.events)",
        ),
        (
            r#""events": {"path": "state/http.addr"}"#,
            "events.path: /etc/sup/state/http.addr is also the HTTP server's address file \
             (<state_dir>/http.addr)",
        ),
        (
            r#""store": {"sqlite": {"path": "state/events.jsonl"}}"#,
            "store.sqlite.path: /etc/sup/state/events.jsonl is also the events file \
             (<state_dir>/events.jsonl, events.path's default)",
        ),
        (
            r#""store": {"sqlite": {"path": "db/x"}}, "events": {"path": "db/x"}"#,
            "events.path: /etc/sup/db/x is also the SQLite store (store.sqlite.path)",
        ),
        (
            r#""store": {"sqlite": {"path": "state/logs/jobs.db"}}"#,
            "store.sqlite.path: /etc/sup/state/logs/jobs.db is inside the job logs' folder \
             (<state_dir>/logs)",
        ),
        (
            r#""events": {"path": "state/x/../logs/e.jsonl"}"#,
            "events.path: /etc/sup/state/x/../logs/e.jsonl is inside the job logs' folder \
             (<state_dir>/logs)",
        ),
        (
            r#""events": {"path": "state/logs"}"#,
            "events.path: /etc/sup/state/logs is also the job logs' folder (<state_dir>/logs)",
        ),
        // SQLite's files next to the store, and the events file's rotated files.
        (
            r#""events": {"path": "state/jobs.db-wal"}"#,
            "events.path: /etc/sup/state/jobs.db-wal is also the SQLite store's write-ahead \
             log (<store.sqlite.path>-wal)",
        ),
        (
            r#""store": {"sqlite": {"path": "state/events.jsonl.3"}}"#,
            "store.sqlite.path: /etc/sup/state/events.jsonl.3 is also one of the events \
             file's rotated files (<events.path>.N)",
        ),
        (
            r#""store": {"sqlite": {"path": "db/e.1"}}, "events": {"path": "db/e"}"#,
            "events.path: its rotated file /etc/sup/db/e.1 is also the SQLite store \
             (store.sqlite.path)",
        ),
        (
            r#""store": {"sqlite": {"path": "state/supervisor.pid"}}"#,
            "store.sqlite.path: /etc/sup/state/supervisor.pid is also the pidfile \
             (<state_dir>/supervisor.pid)",
        ),
        // The state dir, a folder above it, a file below another, the config file.
        (
            r#""events": {"path": "state"}"#,
            "events.path: /etc/sup/state is also the state dir (state_dir)",
        ),
        (
            r#""events": {"path": "."}"#,
            "events.path: /etc/sup would have to be a directory: the state dir (state_dir) \
             /etc/sup/state is inside it",
        ),
        (
            r#""events": {"path": "state/jobs.db/e.jsonl"}"#,
            "events.path: /etc/sup/state/jobs.db/e.jsonl is inside /etc/sup/state/jobs.db, \
             which is the SQLite store (<state_dir>/jobs.db, store.sqlite.path's default)",
        ),
        (
            r#""events": {"path": "supervisor.json"}"#,
            "events.path: /etc/sup/supervisor.json is also the config file",
        ),
        // Whatever the store.
        (
            r#""store": {"postgres": {"url": "postgres://db/jobs"}},
               "events": {"path": "state/supervisor.pid"}"#,
            "events.path: /etc/sup/state/supervisor.pid is also the pidfile \
             (<state_dir>/supervisor.pid)",
        ),
    ];
    for (top, expected) in cases {
        assert_eq!(error(&with(top, "")), expected, "{top}");
    }
    // Near misses are fine.
    for top in [
        r#""events": {"path": "state/events.jsonl.old"}, "store": {"sqlite": {"path": "state/events.jsonl.1x"}}"#,
        r#""events": {"path": "state/logs.jsonl"}, "store": {"sqlite": {"path": "state/logsx/jobs.db"}}"#,
        r#""events": {"path": "state/supervisor.pid2"}, "store": {"sqlite": {"path": "state/jobs.db-wal2"}}"#,
        r#""state_dir": "/srv/st", "events": {"path": "/var/log/sup/e.jsonl"}, "store": {"sqlite": {"path": "/srv/db/jobs.db"}}"#,
        r#""events": {"path": "state/sub/events.jsonl"}, "store": {"sqlite": {"path": "state/sub/jobs.db"}}"#,
    ] {
        ok(&with(top, ""));
    }
    // With every other problem.
    assert_eq!(
        errors(&with(
            r#""events": {"path": "state/jobs.db"}"#,
            r#""max_workers": -1"#
        ))
        .len(),
        2
    );
}

// ---- files ----

/// A folder of its own under the system's temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "supervisor-config-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The errors of `text` as `supervisor.json` in this folder, without the file's name.
    fn errors(&self, text: &str) -> Vec<String> {
        let path = self.0.join("supervisor.json");
        std::fs::write(&path, text).unwrap();
        match load(&path) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(e) => (e.errors.iter())
                .map(|e| {
                    let prefix = format!("{}: ", path.display());
                    e.strip_prefix(&prefix).unwrap_or(e).to_string()
                })
                .collect(),
        }
    }

    fn ok(&self, text: &str) -> Config {
        let path = self.0.join("supervisor.json");
        std::fs::write(&path, text).unwrap();
        load(&path).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn paths_that_cannot_be_what_they_are_for_are_errors() {
    let dir = Scratch::new("kinds");
    let d = dir.0.display();
    assert_eq!(
        dir.errors(&with(r#""store": {"sqlite": {"path": "/"}}"#, "")),
        ["store.sqlite.path: / is a directory; the SQLite store must be a regular file"]
    );
    assert_eq!(
        dir.errors(&with(r#""events": {"path": "/tmp"}"#, "")),
        ["events.path: /tmp is a directory; the events file must be a regular file"]
    );
    std::fs::write(dir.0.join("plain"), "").unwrap();
    assert_eq!(
        dir.errors(&with(r#""state_dir": "plain""#, "")),
        [format!(
            "state_dir: {d}/plain is a regular file; the state dir must be a directory"
        )]
    );
    // Nothing there yet is fine.
    dir.ok(&with("", ""));
    std::fs::write(dir.0.join("state"), "").unwrap();
    assert_eq!(
        dir.errors(&with("", "")),
        [format!(
            "state_dir: {d}/state (its default, state) is a regular file; the state dir must \
             be a directory"
        )]
    );
    std::fs::remove_file(dir.0.join("state")).unwrap();
    std::fs::create_dir_all(dir.0.join("state/logs")).unwrap();
    std::fs::create_dir_all(dir.0.join("state/jobs.db")).unwrap();
    assert_eq!(
        dir.errors(&with("", "")),
        [format!(
            "store.sqlite.path: {d}/state/jobs.db (its default, <state_dir>/jobs.db) is a \
             directory; the SQLite store must be a regular file"
        )]
    );
    std::fs::remove_dir(dir.0.join("state/jobs.db")).unwrap();
    std::fs::remove_dir(dir.0.join("state/logs")).unwrap();
    std::fs::write(dir.0.join("state/logs"), "").unwrap();
    assert_eq!(
        dir.errors(&with("", "")),
        [format!(
            "state_dir: {d}/state/logs (the job logs' folder, <state_dir>/logs) is a regular \
             file; it must be a directory"
        )]
    );
    assert_eq!(
        dir.errors(&with(r#""events": {"path": "plain/e.jsonl"}"#, "")),
        [format!(
            "state_dir: {d}/state/logs (the job logs' folder, <state_dir>/logs) is a \
                 regular file; it must be a directory"
        ),]
    );
    std::fs::remove_file(dir.0.join("state/logs")).unwrap();
    assert_eq!(
        dir.errors(&with(r#""events": {"path": "plain/e.jsonl"}"#, "")),
        [format!(
            "events.path: {d}/plain/e.jsonl cannot be created: a folder on its way is not a \
             directory"
        )]
    );
    assert_eq!(
        dir.errors(&with(r#""events": {"path": "/dev/null"}"#, "")),
        ["events.path: /dev/null is a character device; the events file must be a regular file"]
    );
    // What exists and is of its kind is fine: a run's own files, a symbolic link to one.
    std::fs::write(dir.0.join("state/jobs.db"), "").unwrap();
    std::fs::write(dir.0.join("state/events.jsonl"), "").unwrap();
    std::os::unix::fs::symlink(dir.0.join("state/events.jsonl"), dir.0.join("ev")).unwrap();
    dir.ok(&with("", ""));
    dir.ok(&with(r#""events": {"path": "elsewhere/events.jsonl"}"#, ""));
}

#[test]
fn paths_collide_through_symbolic_and_hard_links() {
    let dir = Scratch::new("links");
    let d = dir.0.display();
    std::fs::create_dir_all(dir.0.join("var/state")).unwrap();
    std::os::unix::fs::symlink(dir.0.join("var"), dir.0.join("link")).unwrap();
    // The pidfile need not exist: the folders on the way do.
    assert_eq!(
        dir.errors(&with(
            r#""state_dir": "var/state", "events": {"path": "link/state/supervisor.pid"}"#,
            ""
        )),
        [format!(
            "events.path: {d}/link/state/supervisor.pid is also the pidfile \
             (<state_dir>/supervisor.pid)"
        )]
    );
    assert_eq!(
        dir.errors(&with(
            r#""state_dir": "link/state", "store": {"sqlite": {"path": "var/state/logs/q.db"}}"#,
            ""
        )),
        [format!(
            "store.sqlite.path: {d}/var/state/logs/q.db is inside the job logs' folder \
             (<state_dir>/logs)"
        )]
    );
    std::fs::write(dir.0.join("var/state/jobs.db"), "").unwrap();
    std::fs::hard_link(dir.0.join("var/state/jobs.db"), dir.0.join("events.jsonl")).unwrap();
    assert_eq!(
        dir.errors(&with(
            r#""state_dir": "var/state", "events": {"path": "events.jsonl"}"#,
            ""
        )),
        [format!(
            "events.path: {d}/events.jsonl is also the SQLite store (<state_dir>/jobs.db, \
             store.sqlite.path's default)"
        )]
    );
}

#[test]
fn unreadable_file_names_the_file_and_the_os_error() {
    let path = repo_root().join("examples/no-such-config.json");
    let errors = load(&path).unwrap_err().errors;
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(&format!("{}: ", path.display())),
        "{errors:?}"
    );
    assert!(
        errors[0].contains("No such file or directory"),
        "{errors:?}"
    );
}

#[test]
fn a_config_that_is_not_a_regular_file_is_refused_at_once() {
    // A device that never ends, and a directory: neither is read.
    for path in ["/dev/zero", "/"] {
        let errors = load(std::path::Path::new(path)).unwrap_err().errors;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(&format!("{path}: ")), "{errors:?}");
        assert!(errors[0].contains("not a regular file"), "{errors:?}");
    }
}

#[test]
fn load_names_the_file_as_given() {
    let dir = std::env::temp_dir().join(format!("supervisor-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.json");
    std::fs::write(&path, "{\"groups\": [{\"name\": 1}]}").unwrap();
    let result = load(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        result.unwrap_err().errors,
        [format!(
            "{}: groups[0].name: expected a string, found 1",
            path.display()
        )]
    );
}

// ---- conversions ----

#[test]
fn spec_conversion() {
    let config = ok(r#"{
        "groups": [
            {"name": "x86_64", "max_workers": 2, "job_timeout_s": 1.5, "max_attempts": 7,
             "retry_backoff": {"initial_s": 2, "max_s": 20, "jitter": 0},
             "restart": {"backoff": {"initial_s": 0.25, "max_s": 4, "jitter": 0.5},
                         "max_restarts": 9, "period_s": 30, "on_exhausted": "disable"}},
            {"name": "arm", "max_workers": 0, "job_timeout_s": null}
        ],
        "heartbeat": {"interval_s": 0.5, "timeout_s": 2},
        "shutdown_grace_s": 0
    }"#);
    let spec = config.spec(true);
    assert!(spec.until_empty);
    assert!(!config.spec(false).until_empty);
    assert_eq!(spec.groups.len(), 2);
    let x = spec.group("x86_64").unwrap();
    assert_eq!(x.max_workers, 2);
    assert_eq!(x.job_timeout, Some(Duration::from_millis(1500)));
    assert_eq!(x.max_attempts, 7);
    assert_eq!(x.retry_backoff, Backoff::from_secs(2.0, 20.0, 0.0));
    assert_eq!(x.restart.backoff, Backoff::from_secs(0.25, 4.0, 0.5));
    assert_eq!(x.restart.max_restarts, 9);
    assert_eq!(x.restart.period, Duration::from_secs(30));
    assert_eq!(x.restart.on_exhausted, OnExhausted::Disable);
    let arm = spec.group("arm").unwrap();
    assert_eq!(arm.max_workers, 0);
    assert_eq!(arm.job_timeout, None);
    assert_eq!(spec.groups[0].name, "x86_64", "config order is kept");

    assert_eq!(spec.grabber_restart, defaults::restart());
    assert_eq!(spec.grabber_restart.on_exhausted, OnExhausted::Exit);
    assert_eq!(spec.heartbeat.interval, Duration::from_millis(500));
    assert_eq!(spec.heartbeat.timeout, Duration::from_secs(2));
    assert_eq!(spec.shutdown_grace, Duration::ZERO);
    assert_eq!(spec.kill_grace, Duration::from_secs(5));
    assert_eq!(spec.start_timeout, Duration::from_secs(10));
}

#[test]
fn summary_line() {
    let config = load(&repo_root().join("examples/supervisor.json")).unwrap();
    let db = config.path.parent().unwrap().join("state/jobs.db");
    assert_eq!(
        config.summary(),
        format!(
            "ok: 2 groups (x86_64: 2 workers, arm: 2 workers), 4 workers, store sqlite {}",
            db.display()
        )
    );
    assert_eq!(config.grabber.poll_interval, Duration::from_millis(200));
    let one = ok(r#"{"groups": [{"name": "solo", "max_workers": 1}]}"#);
    assert_eq!(
        one.summary(),
        "ok: 1 group (solo: 1 worker), 1 worker, store sqlite /etc/sup/state/jobs.db"
    );
}

#[test]
fn routing_by_name_then_first_matching_group() {
    let config = ok(r#"{"groups": [
        {"name": "named-only"},
        {"name": "x86", "match": {"arch": ["x86_64", "i386"], "os": "linux"}},
        {"name": "any-x86", "match": {"arch": "x86_64"}},
        {"name": "catch-all", "match": {}}
    ]}"#);
    let routes = config.routes();
    let route = |group: Option<&str>, t: &[(&str, &str)]| route(&routes, group, &tags(t));
    assert_eq!(
        route(Some("named-only"), &[("arch", "i386")]),
        Some("named-only")
    );
    assert_eq!(route(Some("nope"), &[]), None);
    assert_eq!(
        route(None, &[("arch", "i386"), ("os", "linux")]),
        Some("x86")
    );
    assert_eq!(route(None, &[("arch", "x86_64")]), Some("any-x86"));
    assert_eq!(route(None, &[("arch", "riscv")]), Some("catch-all"));
    assert_eq!(
        route(None, &[]),
        Some("catch-all"),
        "named-only takes no tagged job"
    );
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rt(group: &str, matches: Option<&[(&str, &[&str])]>) -> Route {
    Route {
        group: group.into(),
        matches: matches.map(|m| {
            m.iter()
                .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
                .collect()
        }),
    }
}

#[test]
fn a_named_group_goes_to_that_group_only_if_it_exists() {
    let routes = [rt("a", Some(&[])), rt("b", None)];
    assert_eq!(route(&routes, Some("b"), &tags(&[])), Some("b"));
    assert_eq!(route(&routes, Some("a"), &tags(&[])), Some("a"));
    assert_eq!(route(&routes, Some("zz"), &tags(&[])), None);
    // Naming a group bypasses tag matching.
    assert_eq!(route(&routes, Some("zz"), &tags(&[("x", "y")])), None);
}

#[test]
fn tags_go_to_the_first_matching_route_in_order() {
    let routes = [
        rt("x86", Some(&[("arch", &["x86_64", "i386"])])),
        rt(
            "fast-x86",
            Some(&[("arch", &["x86_64"]), ("speed", &["fast"])]),
        ),
        rt("any", Some(&[])),
    ];
    assert_eq!(
        route(&routes, None, &tags(&[("arch", "i386")])),
        Some("x86")
    );
    // Multi-value match: either value works.
    assert_eq!(
        route(
            &routes,
            None,
            &tags(&[("arch", "x86_64"), ("speed", "fast")])
        ),
        Some("x86")
    );
    // No value match, falls through to the catch-all.
    assert_eq!(route(&routes, None, &tags(&[("arch", "arm")])), Some("any"));
    // Missing key: falls through too.
    assert_eq!(route(&routes, None, &tags(&[])), Some("any"));
}

#[test]
fn every_key_of_a_match_must_hold() {
    let routes = [rt("g", Some(&[("arch", &["x86_64"]), ("os", &["linux"])]))];
    assert_eq!(
        route(&routes, None, &tags(&[("arch", "x86_64"), ("os", "linux")])),
        Some("g")
    );
    assert_eq!(route(&routes, None, &tags(&[("arch", "x86_64")])), None);
    assert_eq!(
        route(&routes, None, &tags(&[("arch", "x86_64"), ("os", "bsd")])),
        None
    );
    // An empty value list matches nothing.
    let routes = [rt("g", Some(&[("arch", &[])]))];
    assert_eq!(route(&routes, None, &tags(&[("arch", "x")])), None);
}

#[test]
fn a_route_without_match_takes_only_jobs_that_name_it() {
    let routes = [rt("named-only", None)];
    assert_eq!(route(&routes, None, &tags(&[])), None);
    assert_eq!(route(&routes, None, &tags(&[("a", "b")])), None);
    assert_eq!(
        route(&routes, Some("named-only"), &tags(&[])),
        Some("named-only")
    );
    assert_eq!(route(&[], None, &tags(&[])), None);
}

// ---- least privilege: users, limits ----

/// A group `a` with `keys`, read as a root supervisor would.
fn as_root(keys: &str) -> Result<Config, Vec<String>> {
    parse_as(&with("", keys), Path::new(FILE), 0).map_err(|e| e.errors)
}

/// The one error of [`as_root`], without the file name.
fn root_error(keys: &str) -> String {
    let errors = as_root(keys).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0]
        .strip_prefix(&format!("{FILE}: "))
        .unwrap()
        .to_string()
}

#[test]
fn a_user_is_resolved_when_the_config_is_loaded() {
    let config = as_root(r#""user": "root""#).unwrap();
    let run_as = config.groups[0].process.run_as.clone().unwrap();
    assert_eq!(
        (run_as.user.as_str(), run_as.uid, run_as.gid),
        ("root", 0, 0)
    );
    assert!(run_as.groups.contains(&0), "{run_as:?}");
    assert_eq!(run_as.home, "/root");
    // Another primary group: its id, and among the supplementary ones.
    let Some(nobody) = supervisor_os::users::lookup_user("nobody").unwrap() else {
        eprintln!("skipped: this system has no user nobody");
        return;
    };
    let config = as_root(r#""user": "nobody", "group": "root""#).unwrap();
    let run_as = config.groups[0].process.run_as.clone().unwrap();
    assert_eq!((run_as.uid, run_as.gid), (nobody.uid, 0));
    assert!(run_as.groups.contains(&0), "{run_as:?}");
    // Without `user`, jobs run as the supervisor's user.
    assert_eq!(ok(&with("", "")).groups[0].process.run_as, None);
}

#[test]
fn unknown_users_and_groups_are_named_with_their_key() {
    assert_eq!(
        root_error(r#""user": "no-such-user-4242""#),
        r#"groups[0].user: no such user "no-such-user-4242""#
    );
    assert_eq!(
        root_error(r#""user": "root", "group": "no-such-group-4242""#),
        r#"groups[0].group: no such group "no-such-group-4242""#
    );
    let long = "x".repeat(300);
    assert!(root_error(&format!(r#""user": "{long}""#)).starts_with("groups[0].user: \""));
    // Reported with every other problem, in the group where it is.
    let text =
        r#"{"groups": [{"name": "a"}, {"name": "b", "user": "no-such-user-4242", "nice": 40}]}"#;
    let mut got = parse_as(text, Path::new(FILE), 0).unwrap_err().errors;
    got.sort();
    assert_eq!(
        got,
        [
            format!("{FILE}: groups[1].nice: must be >= -20 and <= 19, found 40"),
            format!("{FILE}: groups[1].user: no such user \"no-such-user-4242\""),
        ]
    );
}

#[test]
fn a_user_needs_a_supervisor_running_as_root() {
    let errors = parse_as(&with("", r#""user": "root""#), Path::new(FILE), 1000)
        .unwrap_err()
        .errors;
    assert_eq!(
        errors,
        [format!(
            "{FILE}: groups[0].user: running jobs as \"root\" needs a supervisor running as \
             root (this process runs as uid 1000)"
        )]
    );
    assert_eq!(
        root_error(r#""group": "root""#),
        "groups[0].group: needs `user`: it is the primary group of the user jobs run as"
    );
}

#[test]
fn limits_read_as_written() {
    let config = ok(&with(
        "",
        r#""rlimits": {"nofile": 64, "nproc": 100, "core": 0, "as_bytes": 1073741824, "cpu_s": 60},
           "nice": -5, "memory_max_bytes": 268435456, "cpu_max": 0.5"#,
    ));
    let process = &config.groups[0].process;
    let limits: Vec<(&str, u64)> = process
        .limits()
        .iter()
        .map(|l| (l.resource.key(), l.value))
        .collect();
    assert_eq!(
        limits,
        [
            ("nofile", 64),
            ("nproc", 100),
            ("core", 0),
            ("as_bytes", 1 << 30),
            ("cpu_s", 60)
        ]
    );
    assert_eq!(process.nice, Some(-5));
    let cgroup = process.cgroup_limits();
    assert_eq!(cgroup.memory_max_bytes, Some(256 << 20));
    assert_eq!(cgroup.cpu_max, Some(0.5));
    // Only what is given.
    let config = ok(&with("", r#""rlimits": {"nofile": 10}"#));
    assert_eq!(config.groups[0].process.limits().len(), 1);
    assert!(!config.groups[0].process.cgroup_limits().any());
}

#[test]
fn bad_limits_are_named_with_their_range() {
    let cases = [
        (r#""rlimits": {"nofile": 2}"#, "groups[0].rlimits.nofile: must be >= 3 and <= 1048576, found 2"),
        (r#""rlimits": {"nofile": 1048577}"#, "groups[0].rlimits.nofile: must be >= 3 and <= 1048576, found 1048577"),
        (r#""rlimits": {"nofile": 1.5}"#, "groups[0].rlimits.nofile: expected an integer, found 1.5"),
        (r#""rlimits": {"nofile": "lots"}"#, "groups[0].rlimits.nofile: expected an integer, found a string"),
        (r#""rlimits": {"nofile": null}"#, "groups[0].rlimits.nofile: expected an integer, found null"),
        (r#""rlimits": {"nproc": 0}"#, "groups[0].rlimits.nproc: must be >= 1 and <= 4194304, found 0"),
        (r#""rlimits": {"core": -1}"#, "groups[0].rlimits.core: must be >= 0 and <= 1125899906842624, found -1"),
        (r#""rlimits": {"as_bytes": 4096}"#, "groups[0].rlimits.as_bytes: must be >= 1048576 and <= 1125899906842624, found 4096"),
        (r#""rlimits": {"cpu_s": 0}"#, "groups[0].rlimits.cpu_s: must be >= 1 and <= 1000000000, found 0"),
        (r#""rlimits": {"cpu_s": 1e300}"#, "groups[0].rlimits.cpu_s: expected an integer, found 1e+300"),
        (r#""rlimits": {"stack": 1}"#, "groups[0].rlimits.stack: unknown key (expected one of: as_bytes, core, cpu_s, nofile, nproc)"),
        (r#""rlimits": null"#, "groups[0].rlimits: expected an object, found null"),
        (r#""nice": -21"#, "groups[0].nice: must be >= -20 and <= 19, found -21"),
        (r#""nice": 20"#, "groups[0].nice: must be >= -20 and <= 19, found 20"),
        (r#""memory_max_bytes": 1"#, "groups[0].memory_max_bytes: must be >= 1048576 and <= 1125899906842624, found 1"),
        (r#""cpu_max": 0"#, "groups[0].cpu_max: must be >= 0.01 and <= 4096, found 0"),
        (r#""cpu_max": 5000"#, "groups[0].cpu_max: must be >= 0.01 and <= 4096, found 5000"),
        (r#""user": """#, "groups[0].user: must not be empty"),
        (r#""user": null"#, "groups[0].user: expected a string, found null"),
        (r#""user": 0"#, "groups[0].user: expected a string, found 0"),
    ];
    for (keys, want) in cases {
        assert_eq!(root_error(keys), want, "{keys}");
    }
}

#[test]
fn a_reloads_changes_are_said_one_line_each() {
    let old =
        ok(r#"{"groups": [{"name": "a", "max_workers": 1}, {"name": "b", "max_workers": 2}]}"#);
    let new = ok(
        r#"{"groups": [{"name": "a", "max_workers": 3, "max_attempts": 5},
                                {"name": "c", "max_workers": 1}],
                     "shutdown_grace_s": 5}"#,
    );
    assert_eq!(
        old.changes_to(&new),
        [
            "group a: max_workers 1 -> 3",
            "group a: settings changed",
            "group c: added (1 workers)",
            "group b: removed (its workers finish their jobs)",
            "shutdown_grace_s changed",
        ]
    );
    assert!(old.changes_to(&old).is_empty());
    let swapped =
        ok(r#"{"groups": [{"name": "b", "max_workers": 2}, {"name": "a", "max_workers": 1}]}"#);
    assert_eq!(old.changes_to(&swapped), ["group order (routing) changed"]);
}

// ---- text no system call could take, and names no table could show ----

#[test]
fn a_nul_anywhere_is_an_error_at_its_key_path() {
    assert_eq!(
        error(&with(r#""state_dir": "st\u0000ate""#, "")),
        r#"state_dir: must not contain a NUL character (\u0000)"#
    );
    assert_eq!(
        error(&with(r#""events": {"path": "e\u0000.jsonl"}"#, "")),
        r#"events.path: must not contain a NUL character (\u0000)"#
    );
    assert_eq!(
        error(&with(r#""store": {"sqlite": {"path": "\u0000"}}"#, "")),
        r#"store.sqlite.path: must not contain a NUL character (\u0000)"#
    );
    assert!(
        error(&with("", r#""match": {"ar\u0000ch": ["x"]}"#))
            .starts_with(r#"groups[0].match["ar\u0000ch"]: a key must not contain a NUL"#),
        "{}",
        error(&with("", r#""match": {"ar\u0000ch": ["x"]}"#))
    );
}

#[test]
fn a_postgres_url_the_client_cannot_use_is_an_error_at_its_key_path() {
    for url in [
        "notaurl",
        "host=db port=x",
        "postgres://db:99999999/x",
        "host=db sslmode=always",
    ] {
        let e = error(&with(
            &format!(r#""store": {{"postgres": {{"url": "{url}"}}}}"#),
            "",
        ));
        assert!(e.starts_with("store.postgres.url: "), "{url}: {e}");
    }
    for url in [
        "postgres://app:secret@db:5433/jobs?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        "host=db user=app dbname=jobs sslmode=require",
        "postgresql:///jobs?host=/run/postgresql",
    ] {
        ok(&with(
            &format!(r#""store": {{"postgres": {{"url": "{url}"}}}}"#),
            "",
        ));
    }
}

#[test]
fn a_group_name_is_printable_and_at_most_255_characters() {
    assert_eq!(
        error(r#"{"groups": [{"name": "x\ny"}]}"#),
        r#"groups[0].name: must not contain control characters, found "x\ny""#
    );
    assert!(error(r#"{"groups": [{"name": "a\u001b[31m"}]}"#).starts_with("groups[0].name: "));
    let long = "g".repeat(256);
    assert_eq!(
        error(&format!(r#"{{"groups": [{{"name": "{long}"}}]}}"#)),
        "groups[0].name: at most 255 characters, found 256"
    );
    ok(&format!(
        r#"{{"groups": [{{"name": "{}"}}]}}"#,
        "é".repeat(255)
    ));
}
