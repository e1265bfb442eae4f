//! Fuzz targets `jsonl` and `stored_row`: no `submit --file` text and no stored row, however
//! damaged, may panic the store, and what it accepts is what a worker can run.
//!
//! - `jsonl`: [`parse_jobs_jsonl`] on arbitrary text and on valid job lines with random
//!   values of random types in their fields; every job it accepts passes
//!   [`NewJob::validate`].
//! - `stored_row`: [`StoredRun::into_claim`] on arbitrary column values; and a real SQLite
//!   store whose row is damaged by hand (raw SQL, any SQLite type in any column a claim
//!   reads): the claim still succeeds, and the job is claimed, refused (`dead`, with a
//!   reason naming the column) or, for a row that routes nowhere, left queued.
//!
//! A short, seeded run by default; `scripts/fuzz` runs it for longer. Environment:
//! `SUPERVISOR_FUZZ_SECONDS` (run each test for this long instead of a fixed number of
//! cases), `SUPERVISOR_FUZZ_SEED` (a number, or `random`; printed, to replay a run).

use std::cell::RefCell;
use std::collections::BTreeMap;

use proptest::prelude::*;
use rusqlite::types::Value as Sql;
use serde_json::{json, Map, Number, Value};
use supervisor_core::bounds::{self, MAX_ATTEMPTS};
use supervisor_store::{
    parse_jobs_jsonl, route, ClaimedRun, InstanceId, JobId, JobState, JobStore, NewJob, Route,
    SqliteStore, StoredRun,
};

use harness::{broken, fuzz};

// ----- jsonl --------------------------------------------------------------------------

#[test]
fn jsonl_parsing_never_panics_on_arbitrary_text() {
    fuzz(
        "jsonl",
        "jsonl_parsing_never_panics_on_arbitrary_text",
        3000,
        64,
        jsonl_text(),
        |text| check_jsonl(&text),
    );
}

#[test]
fn jsonl_parsing_never_panics_on_mutated_lines() {
    fuzz(
        "jsonl",
        "jsonl_parsing_never_panics_on_mutated_lines",
        1000,
        64,
        job_lines(),
        |text| check_jsonl(&text),
    );
}

/// Every job `parse_jobs_jsonl` accepts is valid, with a bounded timeout; a refusal names
/// at least one line, and no more lines than there are.
fn check_jsonl(text: &str) -> Result<(), TestCaseError> {
    let lines = text.lines().count();
    match parse_jobs_jsonl(text) {
        Ok(jobs) => {
            if jobs.len() > lines {
                return Err(broken(format!("{} jobs from {lines} lines", jobs.len())));
            }
            for job in &jobs {
                job.validate()
                    .map_err(|e| broken(format!("accepted an invalid job ({e}): {job:?}")))?;
                if let Some(t) = job.timeout_s {
                    bounds::check_seconds(t)
                        .map_err(|e| broken(format!("accepted timeout_s {t}: {e}")))?;
                    if bounds::duration(t).as_secs_f64() > bounds::MAX_SECONDS {
                        return Err(broken(format!("timeout_s {t} past the bound")));
                    }
                }
            }
            Ok(())
        }
        Err(errors) => {
            if errors.is_empty() || errors.len() > lines {
                return Err(broken(format!("{} errors for {lines} lines", errors.len())));
            }
            if let Some(e) = errors.iter().find(|e| !e.starts_with("line ")) {
                return Err(broken(format!("an error without its line: {e}")));
            }
            Ok(())
        }
    }
}

/// A valid line of every shape.
const LINES: &[&str] = &[
    r#"{"command": ["echo", "1"]}"#,
    r#"{"command": ["b"], "group": "g", "tags": {"arch": "x86_64"}, "env": {"A": "1"}, "cwd": "/tmp", "timeout_s": 2.5, "max_attempts": 3, "key": "k"}"#,
    r#"{"command": ["sh", "-c", "exit 3"], "timeout_s": 1000000000, "max_attempts": 1000000}"#,
    r#"{"command": ["x"], "env": {}, "tags": {}, "group": null, "cwd": null, "timeout_s": null}"#,
];

/// Number literals past every bound, and other text JSON readers trip on.
const SNIPPETS: &[&str] = &[
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "1e-320",
    "5e-324",
    "1e300",
    "-1",
    "0",
    "4294967296",
    "4294967295",
    "18446744073709551616",
    "-9223372036854775809",
    "1000000000.0000001",
    "1000001",
    "NaN",
    "Infinity",
    "null",
    "true",
    "\"\"",
    "[]",
    "{}",
    "[\"\"]",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"a=b\"",
    ",",
    ":",
    "\"",
    "\\",
    "\n",
    "\r\n",
    "\r",
    "\u{2028}",
    "\u{feff}",
    "\"command\": [\"a\"]",
    "\"command\": [\"a\"], \"command\": [\"b\"]",
    "\"colour\": 1",
];

fn jsonl_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => proptest::string::string_regex("[\\[\\]{}\",:0-9eE.+\\-a-z_ \\n\\r\\\\]{0,200}")
            .expect("a valid regex"),
        4 => (
            prop::collection::vec(prop::sample::select(LINES), 1..4),
            prop::collection::vec(text_edit(), 1..6),
        )
            .prop_map(|(lines, edits)| apply_text_edits(&lines.join("\n"), &edits)),
        1 => prop::collection::vec(prop::sample::select(SNIPPETS), 0..12)
            .prop_map(|parts| parts.concat()),
        1 => (0..5000usize, any::<bool>()).prop_map(|(depth, env)| {
            let nest = "[".repeat(depth) + &"]".repeat(depth);
            match env {
                true => format!(r#"{{"command": ["a"], "env": {{"A": {nest}}}}}"#),
                false => format!(r#"{{"command": {nest}}}"#),
            }
        }),
    ]
}

/// One edit of a text at a position (taken modulo its length, at a char boundary).
#[derive(Clone, Debug)]
enum TextEdit {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, usize, String),
    /// Doubles a slice (repeats keys, brackets, numbers).
    Repeat(usize, usize),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    let snippet = prop_oneof![
        3 => prop::sample::select(SNIPPETS).prop_map(String::from),
        1 => any::<String>(),
        1 => any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        (any::<usize>(), 1..20usize).prop_map(|(at, n)| TextEdit::Delete(at, n)),
        (any::<usize>(), snippet.clone()).prop_map(|(at, s)| TextEdit::Insert(at, s)),
        (any::<usize>(), 1..8usize, snippet).prop_map(|(at, n, s)| TextEdit::Replace(at, n, s)),
        (any::<usize>(), 1..40usize).prop_map(|(at, n)| TextEdit::Repeat(at, n)),
    ]
}

fn apply_text_edits(base: &str, edits: &[TextEdit]) -> String {
    let mut text = base.to_string();
    // The char boundary at or before `at` (modulo the length, end included).
    let boundary = |text: &str, at: usize| {
        let mut i = at % (text.len() + 1);
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let end = |text: &str, from: usize, n: usize| {
        text[from..]
            .char_indices()
            .nth(n)
            .map_or(text.len(), |(i, _)| from + i)
    };
    for edit in edits {
        match edit {
            TextEdit::Delete(at, n) => {
                let from = boundary(&text, *at);
                let to = end(&text, from, *n);
                text.replace_range(from..to, "");
            }
            TextEdit::Insert(at, s) => {
                let at = boundary(&text, *at);
                text.insert_str(at, s);
            }
            TextEdit::Replace(at, n, s) => {
                let from = boundary(&text, *at);
                let to = end(&text, from, *n);
                text.replace_range(from..to, s);
            }
            TextEdit::Repeat(at, n) => {
                let from = boundary(&text, *at);
                let to = end(&text, from, *n);
                let slice = text[from..to].to_string();
                text.insert_str(to, &slice);
            }
        }
    }
    text
}

/// Strings that bounds and checks care about: empty, NUL bytes, `=`, and any.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z0-9_/.]{1,10}",
        2 => prop::sample::select(vec![
            "", "\0", "a\0b", "=", "A=B", "PATH", "/tmp", "g", "x86", " ", "\u{202e}", "ß",
        ])
        .prop_map(String::from),
        2 => any::<String>(),
    ]
}

/// An argument or a variable's value: a [`string`], or now and then (they are slow) one
/// around one argument's limit, or past all of them together.
fn arg() -> impl Strategy<Value = String> {
    prop_oneof![
        200 => string(),
        1 => prop::sample::select(vec![131_070, 131_071, 131_072, 131_073, 200_000, 600_000])
            .prop_map(|n| "x".repeat(n)),
    ]
}

const FLOATS: &[f64] = &[
    1e300,
    -1.0,
    1e-320,
    5e-324,
    0.0,
    -0.0,
    0.5,
    1.0,
    1e-9,
    1e9,
    1e9 + 1.0,
    1_000_000_000.000_000_1,
    4_294_967_296.0,
    1.8e19,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    -1e300,
];

const INTEGERS: &[i64] = &[
    0,
    1,
    -1,
    2,
    3,
    1_000_000,
    1_000_001,
    4_294_967_294,
    4_294_967_295,
    4_294_967_296,
    i64::MIN,
    i64::MAX,
    i32::MIN as i64,
    i32::MAX as i64,
    -4_294_967_295,
];

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![prop::sample::select(FLOATS), any::<f64>(), 0.0..2e9f64,]
}

fn integer() -> impl Strategy<Value = i64> {
    prop_oneof![prop::sample::select(INTEGERS), any::<i64>(), -5..10i64]
}

/// A JSON number (null for NaN and the infinities, which JSON cannot hold).
fn number(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Any JSON value, a few levels deep, with the interesting numbers and strings.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        float().prop_map(number),
        integer().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((string(), inner), 0..5)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A value for a job field: mostly of its own type (valid or at a bound), sometimes any.
fn field(name: &'static str) -> BoxedStrategy<Value> {
    let own: BoxedStrategy<Value> = match name {
        "command" => prop::collection::vec(arg(), 0..4)
            .prop_map(|v| json!(v))
            .boxed(),
        "tags" | "env" => prop::collection::btree_map(string(), arg(), 0..4)
            .prop_map(|m| json!(m))
            .boxed(),
        "timeout_s" => float().prop_map(number).boxed(),
        "max_attempts" => integer().prop_map(Value::from).boxed(),
        _ => string().prop_map(Value::String).boxed(),
    };
    prop_oneof![6 => own, 1 => Just(Value::Null), 2 => json()].boxed()
}

const FIELDS: &[&str] = &[
    "command",
    "group",
    "tags",
    "env",
    "cwd",
    "timeout_s",
    "max_attempts",
    "key",
];

/// One job object: each field absent or set (command mostly set), now and then an
/// unknown one.
fn job_object() -> impl Strategy<Value = Value> {
    let fields: Vec<BoxedStrategy<Option<Value>>> = FIELDS
        .iter()
        .map(|name| {
            let weight = if *name == "command" { 8 } else { 2 };
            prop_oneof![3 => Just(None), weight => field(name).prop_map(Some)].boxed()
        })
        .collect();
    (fields, prop::option::weighted(0.1, (string(), json()))).prop_map(|(values, unknown)| {
        let mut object = Map::new();
        for (name, value) in FIELDS.iter().zip(values) {
            if let Some(value) = value {
                object.insert(name.to_string(), value);
            }
        }
        if let Some((k, v)) = unknown {
            object.insert(k, v);
        }
        Value::Object(object)
    })
}

/// A few job lines, with blank lines and CRLFs between them, now and then edited as text.
fn job_lines() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            (
                job_object(),
                prop::sample::select(vec!["\n", "\r\n", "\n\n", "\n  \t\n"]),
            ),
            1..4,
        ),
        prop::option::weighted(0.2, prop::collection::vec(text_edit(), 1..3)),
    )
        .prop_map(|(lines, edits)| {
            let mut text = String::new();
            for (object, separator) in lines {
                text += &object.to_string();
                text += separator;
            }
            match edits {
                Some(edits) => apply_text_edits(&text, &edits),
                None => text,
            }
        })
}

// ----- stored rows --------------------------------------------------------------------

#[test]
fn stored_row_decoding_never_panics() {
    fuzz(
        "stored_row",
        "stored_row_decoding_never_panics",
        1500,
        64,
        (stored_run(), any::<i64>(), string()),
        |(run, id, group)| match run.clone().into_claim(id, &group) {
            Ok(claim) => check_claim(&claim, id, &group, run.attempts.as_ref().ok().copied()),
            Err(reason) => {
                let fields = [
                    "command",
                    "env",
                    "cwd",
                    "timeout_s",
                    "max_attempts",
                    "attempts",
                ];
                match fields.iter().any(|f| reason.starts_with(f)) {
                    true => Ok(()),
                    false => Err(broken(format!("a refusal naming no field: {reason}"))),
                }
            }
        },
    );
}

/// What every claim handed to a worker must hold.
fn check_claim(
    claim: &ClaimedRun,
    id: JobId,
    group: &str,
    attempts: Option<i64>,
) -> Result<(), TestCaseError> {
    if claim.id != id || claim.group != group {
        return Err(broken(format!("claimed as {}/{}", claim.id, claim.group)));
    }
    if claim.attempt < 1 || attempts.is_some_and(|a| i64::from(claim.attempt) != a + 1) {
        return Err(broken(format!(
            "attempt {} after {attempts:?}",
            claim.attempt
        )));
    }
    if let Some(t) = claim.timeout_s {
        let d = bounds::duration(t);
        if d.as_secs_f64() > 1e9 || bounds::check_seconds(t).is_err() {
            return Err(broken(format!("timeout_s {t} ({d:?})")));
        }
    }
    if let Some(n) = claim.max_attempts {
        if !(1..=MAX_ATTEMPTS).contains(&n) {
            return Err(broken(format!("max_attempts {n}")));
        }
    }
    let job = NewJob {
        command: claim.command.clone(),
        env: claim.env.clone(),
        cwd: claim.cwd.clone(),
        timeout_s: claim.timeout_s,
        max_attempts: claim.max_attempts,
        ..NewJob::default()
    };
    job.validate()
        .map_err(|e| broken(format!("claimed a job that cannot run: {e}")))
}

fn wrong() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a stored value of the wrong type: a blob of 3 bytes".to_string()),
        any::<String>(),
    ]
}

fn stored_run() -> impl Strategy<Value = StoredRun> {
    let ok_or_err = |weight_err| prop::bool::weighted(weight_err);
    (
        (ok_or_err(0.1), prop::collection::vec(arg(), 0..4), wrong()).prop_map(|(err, v, e)| {
            if err {
                Err(e)
            } else {
                Ok(v)
            }
        }),
        (
            ok_or_err(0.1),
            prop::collection::btree_map(string(), arg(), 0..4),
            wrong(),
        )
            .prop_map(|(err, m, e)| if err { Err(e) } else { Ok(m) }),
        (ok_or_err(0.1), prop::option::of(string()), wrong()).prop_map(|(err, v, e)| {
            if err {
                Err(e)
            } else {
                Ok(v)
            }
        }),
        (ok_or_err(0.1), prop::option::of(float()), wrong()).prop_map(|(err, v, e)| {
            if err {
                Err(e)
            } else {
                Ok(v)
            }
        }),
        (ok_or_err(0.1), prop::option::of(integer()), wrong()).prop_map(|(err, v, e)| {
            if err {
                Err(e)
            } else {
                Ok(v)
            }
        }),
        (ok_or_err(0.1), integer(), wrong())
            .prop_map(|(err, v, e)| if err { Err(e) } else { Ok(v) }),
    )
        .prop_map(
            |(command, env, cwd, timeout_s, max_attempts, attempts)| StoredRun {
                command,
                env,
                cwd,
                timeout_s,
                max_attempts,
                attempts,
            },
        )
}

/// The columns of a job row that a claim reads, as named in its table.
const COLUMNS: &[&str] = &[
    "command",
    "env",
    "tags",
    "cwd",
    "timeout_s",
    "max_attempts",
    "attempts",
    "named_group",
];

/// One damaged row: the job as submitted, the column, and the value put there.
#[derive(Clone, Debug)]
struct Damage {
    job: NewJob,
    column: &'static str,
    value: Sql,
}

/// A value of any SQLite type, shaped for `column` now and then (JSON of the right or
/// almost the right shape, numbers at the bounds, text that SQLite's column affinity turns
/// into a number).
fn sql_value(column: &'static str) -> BoxedStrategy<Sql> {
    let text_json = |v: Value| Sql::Text(v.to_string());
    let shaped: BoxedStrategy<Sql> = match column {
        "command" => prop_oneof![
            prop::collection::vec(string(), 0..4).prop_map(move |v| text_json(json!(v))),
            json().prop_map(text_json),
        ]
        .boxed(),
        "env" | "tags" => prop_oneof![
            prop::collection::btree_map(string(), string(), 0..4)
                .prop_map(move |m| text_json(json!(m))),
            Just(Sql::Text(r#"{"arch": "x86"}"#.into())),
            Just(Sql::Text(r#"{"arch": "x86", "arch": "arm"}"#.into())),
            Just(Sql::Text(r#"{"arch": "arm", "arch": "x86"}"#.into())),
            Just(Sql::Blob(br#"{"arch": "x86"}"#.to_vec())),
            json().prop_map(text_json),
        ]
        .boxed(),
        "timeout_s" | "max_attempts" | "attempts" => prop_oneof![
            float().prop_map(Sql::Real),
            integer().prop_map(Sql::Integer),
            prop::sample::select(vec!["3", "1e999", "-1e999", "2.5", " 7 ", "0x10", "1e9"])
                .prop_map(|s| Sql::Text(s.into())),
        ]
        .boxed(),
        _ => prop_oneof![
            prop::sample::select(vec!["g", "x86", "", "/tmp", "/nonexistent", "G"])
                .prop_map(|s| Sql::Text(s.into())),
            string().prop_map(Sql::Text),
        ]
        .boxed(),
    };
    prop_oneof![
        4 => shaped,
        1 => Just(Sql::Null),
        1 => integer().prop_map(Sql::Integer),
        1 => float().prop_map(Sql::Real),
        1 => string().prop_map(Sql::Text),
        1 => prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            json().prop_map(|v| v.to_string().into_bytes()),
        ]
        .prop_map(Sql::Blob),
    ]
    .boxed()
}

fn damage() -> impl Strategy<Value = Damage> {
    let job = (
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![0.5, 5.0, 1e9])),
        prop::option::of(1..5u32),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(named, timeout_s, max_attempts, env, cwd)| {
            let mut job = NewJob::new(["true"]);
            if named {
                job.group = Some("g".into());
            } else {
                job.tags.insert("arch".into(), "x86".into());
            }
            job.timeout_s = timeout_s;
            job.max_attempts = max_attempts;
            if env {
                job.env.insert("A".into(), "1".into());
            }
            if cwd {
                job.cwd = Some("/tmp".into());
            }
            job
        });
    (job, prop::sample::select(COLUMNS)).prop_flat_map(|(job, column)| {
        sql_value(column).prop_map(move |value| Damage {
            job: job.clone(),
            column,
            value,
        })
    })
}

/// A store and a raw connection to its file, renewed every so many cases.
struct Fixture {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    raw: rusqlite::Connection,
    me: InstanceId,
    used: u32,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("jobs.db");
        let mut store = SqliteStore::open(&path).expect("a new store");
        let me = store
            .register_instance("fuzz", std::process::id(), "t", NOW)
            .expect("an instance");
        let raw = rusqlite::Connection::open(&path).expect("a second connection");
        raw.busy_timeout(std::time::Duration::from_secs(5))
            .expect("a busy timeout");
        Fixture {
            _dir: dir,
            store,
            raw,
            me,
            used: 0,
        }
    }
}

const NOW: f64 = 1_700_000_000.0;

fn routes() -> Vec<Route> {
    vec![
        Route {
            group: "g".into(),
            matches: None,
        },
        Route {
            group: "x86".into(),
            matches: Some(BTreeMap::from([(
                "arch".to_string(),
                vec!["x86".to_string()],
            )])),
        },
    ]
}

#[test]
fn stored_row_damage_in_sqlite_is_claimed_or_refused() {
    let fixture: RefCell<Option<Fixture>> = RefCell::new(None);
    fuzz(
        "stored_row",
        "stored_row_damage_in_sqlite_is_claimed_or_refused",
        300,
        16,
        damage(),
        |damage| {
            let mut slot = fixture.borrow_mut();
            if slot.as_ref().is_none_or(|f| f.used >= 200) {
                *slot = Some(Fixture::new());
            }
            let f = slot.as_mut().expect("set above");
            f.used += 1;
            check_damage(f, &damage)
        },
    );
}

/// Found by `stored_row_damage_in_sqlite_is_claimed_or_refused` against 7ffeec0: a blob in
/// `named_group` was read as "names no group" by the claim's routing, but selected by none
/// of the claim's SQL, so the job stayed queued for good (fixed by routing once, e586853).
#[test]
fn a_blob_in_named_group_is_claimed_or_refused() {
    let mut f = Fixture::new();
    let mut job = NewJob::new(["true"]);
    job.tags.insert("arch".into(), "x86".into());
    let id = f.store.submit(&[job], NOW).unwrap()[0];
    f.raw
        .execute(
            "UPDATE jobs SET named_group = ?1 WHERE id = ?2",
            rusqlite::params![Sql::Blob(b"x86".to_vec()), id],
        )
        .unwrap();
    let mut credits = BTreeMap::from([("g".to_string(), 9), ("x86".to_string(), 9)]);
    let result = f.store.claim(f.me, &routes(), &mut credits, NOW).unwrap();
    let job = f.store.get(id, NOW).unwrap().unwrap();
    assert!(
        result.jobs.iter().any(|c| c.id == id) || result.refused.iter().any(|r| r.id == id),
        "neither claimed nor refused: {} (group {:?}, tags {:?})",
        job.state,
        job.group,
        job.tags
    );
}

/// Submits the job, damages its row, claims: the claim must succeed and end the job in
/// one of the states the damage allows; `get`, `list` and `counts` must still work.
fn check_damage(f: &mut Fixture, damage: &Damage) -> Result<(), TestCaseError> {
    let id = f
        .store
        .submit(std::slice::from_ref(&damage.job), NOW)
        .map_err(|e| broken(format!("submit: {e}")))?[0];
    let column = damage.column;
    // `NOT NULL` columns refuse a null: then the row is whole and must be claimed.
    let damaged = f
        .raw
        .execute(
            &format!("UPDATE jobs SET {column} = ?1 WHERE id = ?2"),
            rusqlite::params![damage.value, id],
        )
        .is_ok();
    // The row as stored now (column affinity may have converted the value).
    let (named_group, tags): (Sql, Sql) = f
        .raw
        .query_row(
            "SELECT named_group, tags FROM jobs WHERE id = ?1",
            [id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(|e| broken(format!("read back: {e}")))?;
    let routes = routes();
    let mut credits = BTreeMap::from([("g".to_string(), 1000), ("x86".to_string(), 1000)]);
    let result = f
        .store
        .claim(f.me, &routes, &mut credits, NOW)
        .map_err(|e| broken(format!("the claim failed ({column} damaged): {e}")))?;
    let job = f
        .store
        .get(id, NOW)
        .map_err(|e| broken(format!("get failed: {e}")))?
        .ok_or_else(|| broken("the job is gone"))?;
    f.store
        .list(None, NOW)
        .map_err(|e| broken(format!("list failed: {e}")))?;
    f.store
        .list(Some(JobState::Dead), NOW)
        .map_err(|e| broken(format!("list dead failed: {e}")))?;
    f.store
        .counts(NOW)
        .map_err(|e| broken(format!("counts failed: {e}")))?;

    let claimed = result.jobs.iter().find(|c| c.id == id);
    let refused = result.refused.iter().find(|r| r.id == id);
    match (claimed, refused) {
        (Some(claim), None) => {
            let group = claim.group.clone();
            check_claim(claim, id, &group, None)?;
            if job.state != JobState::Running {
                return Err(broken(format!("claimed but {}", job.state)));
            }
        }
        (None, Some(refused)) => {
            let field = match column {
                "named_group" => "group",
                other => other,
            };
            if !damaged || !refused.reason.contains(field) {
                return Err(broken(format!(
                    "refused for damage to {column} ({}), with reason {:?}",
                    if damaged { "damaged" } else { "not damaged" },
                    refused.reason
                )));
            }
            if job.state != JobState::Dead || job.reason.as_deref() != Some(&refused.reason) {
                return Err(broken(format!(
                    "refused but {} with reason {:?}",
                    job.state, job.reason
                )));
            }
        }
        (None, None) => {
            // Left queued: only a job that routes nowhere, as the claim reads its row.
            let group = match &named_group {
                Sql::Text(g) => Some(g.as_str()),
                _ => None,
            };
            let tags: BTreeMap<String, String> = match &tags {
                Sql::Text(t) => serde_json::from_str(t).unwrap_or_default(),
                _ => BTreeMap::new(),
            };
            let routed = route(&routes, group, &tags);
            if job.state != JobState::Queued || routed.is_some() {
                return Err(broken(format!(
                    "neither claimed nor refused after damage to {column}: {} \
                     (named_group {named_group:?}, tags {tags:?}, routed to {routed:?})",
                    job.state
                )));
            }
        }
        (Some(_), Some(_)) => return Err(broken("both claimed and refused")),
    }
    Ok(())
}

/// The time-budgeted, seeded proptest loop shared by the fuzz targets (each test crate
/// holds its own copy).
mod harness {
    use std::cell::Cell;
    use std::fmt::Debug;
    use std::time::{Duration, Instant};

    use proptest::strategy::Strategy;
    use proptest::test_runner::{
        Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
    };

    /// Run each test for this many seconds (instead of its fixed number of cases).
    pub const SECONDS_VAR: &str = "SUPERVISOR_FUZZ_SECONDS";
    /// The seed: a number, or `random`; unset, a fixed one.
    pub const SEED_VAR: &str = "SUPERVISOR_FUZZ_SEED";
    const DEFAULT_SEED: u64 = 0x5EED_F022;
    /// How a failed check (not a panic) starts its message.
    const BROKEN: &str = "broken invariant: ";

    /// A case that broke an invariant without panicking.
    pub fn broken(what: impl std::fmt::Display) -> TestCaseError {
        TestCaseError::fail(format!("{BROKEN}{what}"))
    }

    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn first_seed() -> u64 {
        match std::env::var(SEED_VAR) {
            Err(_) => DEFAULT_SEED,
            Ok(s) if s.trim() == "random" => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                mix(nanos ^ u64::from(std::process::id()).rotate_left(32))
            }
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_VAR}: a number or `random`, not {s:?}")),
        }
    }

    fn budget() -> Option<Duration> {
        let s = std::env::var(SECONDS_VAR).ok()?;
        let secs: f64 = s
            .trim()
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite() && *x >= 0.0)
            .unwrap_or_else(|| panic!("{SECONDS_VAR}: a number of seconds, not {s:?}"));
        Some(Duration::from_secs_f64(secs))
    }

    /// Runs `check` on values of `strategy` in batches of `batch` cases, each batch from
    /// its own seed (the first from [`SEED_VAR`], each next one derived from the last),
    /// until `default_cases` have passed or, with [`SECONDS_VAR`] set, until that time is
    /// up. A panic or a failed check is shrunk by proptest and fails the test, naming the
    /// seed that replays its batch first. Prints one `fuzz-result` line for `scripts/fuzz`.
    pub fn fuzz<S>(
        target: &str,
        test: &str,
        default_cases: u64,
        batch: u32,
        strategy: S,
        check: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) where
        S: Strategy,
        S::Value: Debug,
    {
        let deadline = budget().map(|b| Instant::now() + b);
        let first = first_seed();
        let mut seed = first;
        let passed = Cell::new(0u64);
        let started = Instant::now();
        loop {
            let done = match deadline {
                Some(deadline) => Instant::now() >= deadline,
                None => passed.get() >= default_cases,
            };
            if done {
                break;
            }
            let mut bytes = [0u8; 32];
            let mut s = seed;
            for chunk in bytes.chunks_mut(8) {
                s = mix(s);
                chunk.copy_from_slice(&s.to_le_bytes());
            }
            let config = Config {
                cases: batch,
                failure_persistence: None,
                rng_algorithm: RngAlgorithm::ChaCha,
                ..Config::default()
            };
            let mut runner =
                TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
            let result = runner.run(&strategy, |value| {
                let result = check(value);
                if result.is_ok() {
                    passed.set(passed.get() + 1);
                }
                result
            });
            let (why, input) = match result {
                Ok(()) => {
                    seed = mix(seed);
                    continue;
                }
                Err(TestError::Fail(why, input)) => {
                    (why.message().to_string(), format!("{input:#?}"))
                }
                Err(TestError::Abort(why)) => (why.message().to_string(), String::new()),
            };
            let (panics, broken) = match why.starts_with(BROKEN) {
                true => (0, 1),
                false => (1, 0),
            };
            eprintln!(
                "fuzz-result target={target} test={test} cases={} panics={panics} broken={broken} seed={first} secs={:.1}",
                passed.get(),
                started.elapsed().as_secs_f64()
            );
            let input: String = input.chars().take(20_000).collect();
            panic!(
                "{target}/{test}: {why}\nminimal input: {input}\n\
                 replay: {SEED_VAR}={seed} (the failing batch then runs first)"
            );
        }
        eprintln!(
            "fuzz-result target={target} test={test} cases={} panics=0 broken=0 seed={first} secs={:.1}",
            passed.get(),
            started.elapsed().as_secs_f64()
        );
    }
}
