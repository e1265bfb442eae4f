//! Fuzz target `config`: no config text, however broken, may panic `parse`, and every
//! config it accepts holds only values the rest of the supervisor can use.
//!
//! Two generators: arbitrary text (random strings, JSON-like noise, `examples/full.json`
//! edited character by character, deep nesting, number literals out of every range), and
//! structured JSON (a valid config with random values of random types put at random keys,
//! keys removed and added, extreme numbers, deep nesting).
//!
//! A short, seeded run by default; `scripts/fuzz` runs it for longer. Environment:
//! `SUPERVISOR_FUZZ_SECONDS` (run each test for this long instead of a fixed number of
//! cases), `SUPERVISOR_FUZZ_SEED` (a number, or `random`; printed, to replay a run).

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use supervisor_config::{parse, Config};
use supervisor_core::backoff::Backoff;
use supervisor_core::bounds::{MAX_ATTEMPTS, MAX_SECONDS};
use supervisor_core::supervision::{Core, Input};
use supervisor_core::{SplitMix64, Time};

use harness::{broken, fuzz};

const FILE: &str = "/etc/sup/supervisor.json";
const FULL: &str = include_str!("../../../examples/full.json");
const MINIMAL: &str = r#"{"groups": [{"name": "g"}]}"#;
const POSTGRES: &str = r#"{
  "store": {"postgres": {"url": "postgres://app:s3cret@db/jobs"}},
  "groups": [{"name": "a", "match": {}}, {"name": "b", "max_workers": 0, "job_timeout_s": 0.5}],
  "heartbeat": {"interval_s": 0.25, "timeout_s": 1}
}"#;

#[test]
fn config_parsing_never_panics_on_arbitrary_text() {
    fuzz(
        "config",
        "config_parsing_never_panics_on_arbitrary_text",
        3000,
        64,
        (text(), config_path()),
        |(text, path)| check_parse(&text, &path),
    );
}

#[test]
fn config_parsing_never_panics_on_mutated_configs() {
    fuzz(
        "config",
        "config_parsing_never_panics_on_mutated_configs",
        1000,
        64,
        (mutated_config(), config_path()),
        |(text, path)| check_parse(&text, &path),
    );
}

/// Pools past this many workers in all are left out of the core's start (a known bug).
const KNOWN_BUG_WORKERS: u64 = 100_000;

/// Found by `config_parsing_never_panics_on_mutated_configs`: a config with
/// `"max_workers": 4294967295` passed `parse`, and `Core::new` (what `supervisor run`
/// does with its spec), which builds one slot per worker, asked for 256 GiB and aborted.
/// The config now bounds a pool at `bounds::MAX_WORKERS`; the largest pool it takes
/// starts its core.
#[test]
fn a_config_it_accepts_can_start_its_core() {
    let huge = r#"{"groups": [{"name": "g", "max_workers": 4294967295}]}"#;
    let e = parse(huge, Path::new(FILE)).unwrap_err();
    assert!(e.errors[0].contains("groups[0].max_workers"), "{e}");
    let largest = format!(
        r#"{{"groups": [{{"name": "g", "max_workers": {}}}]}}"#,
        supervisor_core::bounds::MAX_WORKERS
    );
    let config = parse(&largest, Path::new(FILE)).unwrap();
    let mut core = Core::new(config.spec(false), Box::new(SplitMix64::new(7)));
    core.handle(Time::ZERO, Input::Start);
}

/// Parses `text`; a panic fails the case (the harness catches it), and an accepted config
/// must hold only bounded values.
fn check_parse(text: &str, path: &str) -> Result<(), TestCaseError> {
    match parse(text, Path::new(path)) {
        Ok(config) => check_config(&config),
        Err(e) => {
            if e.errors.is_empty() {
                return Err(broken("a refusal without a single error"));
            }
            // The validator walks the schema of the typed structs: a refusal by serde
            // after the walk (`parse` reports it as the one error) means they disagree.
            if let [only] = e.errors.as_slice() {
                let typed = ["invalid type:", "invalid value:", "missing field `"]
                    .iter()
                    .chain(&["unknown field `", "unknown variant `", "did not match any"])
                    .any(|phrase| only.contains(phrase));
                if typed && only.starts_with(&format!("{path}: ")) {
                    return Err(broken(format!(
                        "the validator passed what the typed structs refuse: {only}"
                    )));
                }
            }
            Ok(())
        }
    }
}

/// What every accepted config must hold: finite spans within `MAX_SECONDS`, attempts and
/// jitter within their ranges, and a spec the core can run without a panic.
fn check_config(c: &Config) -> Result<(), TestCaseError> {
    let max = Duration::from_secs_f64(MAX_SECONDS);
    let mut spans = vec![
        ("shutdown_grace_s".to_string(), c.shutdown_grace),
        ("heartbeat.interval_s".to_string(), c.heartbeat.interval),
        ("heartbeat.timeout_s".to_string(), c.heartbeat.timeout),
        (
            "grabber.poll_interval_s".to_string(),
            c.grabber.poll_interval,
        ),
    ];
    let mut backoffs = vec![("grabber.error_backoff".to_string(), c.grabber.error_backoff)];
    for g in &c.groups {
        let name = &g.name;
        if let Some(t) = g.job_timeout {
            spans.push((format!("{name}.job_timeout_s"), t));
        }
        spans.push((format!("{name}.restart.period_s"), g.restart.period));
        backoffs.push((format!("{name}.retry_backoff"), g.retry_backoff));
        backoffs.push((format!("{name}.restart.backoff"), g.restart.backoff));
        if !(1..=MAX_ATTEMPTS).contains(&g.max_attempts) {
            return Err(broken(format!("{name}.max_attempts {}", g.max_attempts)));
        }
        if g.name.is_empty() {
            return Err(broken("a group without a name"));
        }
    }
    for (what, b) in &backoffs {
        spans.push((format!("{what}.initial_s"), b.initial));
        spans.push((format!("{what}.max_s"), b.max));
        if !(b.jitter.is_finite() && (0.0..=1.0).contains(&b.jitter)) {
            return Err(broken(format!("{what}.jitter {}", b.jitter)));
        }
        if b.max < b.initial {
            return Err(broken(format!(
                "{what}: max {:?} < initial {:?}",
                b.max, b.initial
            )));
        }
        check_delays(what, b, max)?;
    }
    for (what, d) in &spans {
        if !d.as_secs_f64().is_finite() || *d > max {
            return Err(broken(format!("{what} {d:?} is past {MAX_SECONDS} s")));
        }
    }
    if c.groups.is_empty() {
        return Err(broken("no group"));
    }
    if c.events.rotate_bytes < 4096 {
        return Err(broken(format!("rotate_bytes {}", c.events.rotate_bytes)));
    }
    // What the supervisor does with an accepted config: its spec, summary and locations,
    // and a core started on it, driven to its first few deadlines.
    let _ = c.summary();
    let _ = c.locations();
    let _ = c.total_workers();
    let _ = c.spec(true);
    let spec = c.spec(false);
    // Known bug (reported; see `a_config_it_accepts_can_start_its_core`): `max_workers`
    // has no upper bound, and the core allocates every worker's slot up front, so a huge
    // pool aborts the process (out of memory) instead of being refused. Left out here so
    // that a long run looks for other failures.
    if c.total_workers() > KNOWN_BUG_WORKERS {
        return Ok(());
    }
    let mut core = Core::new(spec, Box::new(SplitMix64::new(7)));
    let mut now = Time::ZERO;
    core.handle(now, Input::Start);
    for _ in 0..4 {
        let Some(deadline) = core.next_deadline() else {
            break;
        };
        now = now.max(deadline);
        core.on_timeout(now);
    }
    Ok(())
}

/// The first delays of a backoff stay within its band (and nothing panics on the way).
fn check_delays(what: &str, b: &Backoff, max: Duration) -> Result<(), TestCaseError> {
    let mut rng = SplitMix64::new(11);
    let mut last = None;
    for _ in 0..12 {
        let d = b.next_delay(last, &mut rng);
        if d > max || d > b.max.max(b.initial) {
            return Err(broken(format!(
                "{what}: delay {d:?} past its max {:?}",
                b.max
            )));
        }
        last = Some(d);
    }
    let _ = b.nth_delay(40, &mut rng);
    Ok(())
}

// ----- generators ---------------------------------------------------------------------

/// The config file's name as given with `-c`: mostly ordinary, sometimes odd.
fn config_path() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => Just(FILE.to_string()),
        1 => prop::sample::select(vec![
            "", "supervisor.json", "./a/../b.json", "/", "/x", "rel/dir/", "a\u{0}b",
            "/../../..", "~/s.json", "//double//slash",
        ])
        .prop_map(String::from),
        1 => any::<String>(),
    ]
}

/// Number literals out of every range, and other text that JSON readers trip on.
const SNIPPETS: &[&str] = &[
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "-0.0",
    "1E+308",
    "1.7976931348623157e308",
    "18446744073709551616",
    "18446744073709551615",
    "-9223372036854775809",
    "4294967296",
    "4294967295",
    "1e-320",
    "5e-324",
    "1e300",
    "-1",
    "0",
    "1000000000",
    "1000000000.0000001",
    "1000000001",
    "NaN",
    "Infinity",
    "-Infinity",
    "null",
    "true",
    "\"\"",
    "[]",
    "{}",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\uDFFF\"",
    "\"\u{10ffff}\"",
    ",",
    ":",
    "\"",
    "\\",
    "{\"groups\": []}",
    "\"groups\": [{\"name\": \"g\"}]",
    "\"name\": \"g\", \"name\": \"h\"",
    "\"match\": {\"a\": []}",
    "\"store\": {}",
    "\"store\": {\"sqlite\": {}, \"postgres\": {}}",
    "\u{feff}",
    "\r\n",
    "\t",
    "/* */",
    "// x\n",
];

/// Arbitrary text, JSON-like noise, a valid config edited character by character, and
/// deeply nested documents.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => proptest::string::string_regex("[\\[\\]{}\",:0-9eE.+\\-a-z_ \\n\\\\]{0,200}")
            .expect("a valid regex"),
        4 => (
            prop::sample::select(vec![FULL, MINIMAL, POSTGRES]),
            prop::collection::vec(text_edit(), 1..6),
        )
            .prop_map(|(base, edits)| apply_text_edits(base, &edits)),
        2 => deep_nesting(),
        1 => prop::collection::vec(prop::sample::select(SNIPPETS), 0..12)
            .prop_map(|parts| parts.concat()),
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

/// Nesting far past any parser's recursion limit, alone or where a config allows any
/// depth of JSON (a `match` value), closed or not.
fn deep_nesting() -> impl Strategy<Value = String> {
    (0..6000usize, 0..4u8, any::<bool>(), 0..3u8).prop_map(|(depth, kind, closed, place)| {
        let (open, leaf, close) = match kind {
            0 => ("[", "1", "]"),
            1 => ("{\"a\":", "null", "}"),
            2 => ("[{\"match\":", "{}", "}]"),
            _ => ("{\"groups\":[", "{\"name\":\"g\"}", "]}"),
        };
        let mut nest = open.repeat(depth) + leaf;
        if closed {
            nest += &close.repeat(depth);
        }
        match place {
            0 => nest,
            1 => format!(r#"{{"groups": [{{"name": "g", "match": {{"k": {nest}}}}}]}}"#),
            _ => format!(r#"{{"groups": [{{"name": "g"}}], "unknown": {nest}}}"#),
        }
    })
}

/// Keys of the config file (so that random objects often look like parts of one), and a
/// few of the schema's own keywords.
const KEYS: &[&str] = &[
    "state_dir",
    "store",
    "sqlite",
    "postgres",
    "path",
    "url",
    "grabber",
    "poll_interval_s",
    "error_backoff",
    "initial_s",
    "max_s",
    "jitter",
    "groups",
    "name",
    "max_workers",
    "match",
    "job_timeout_s",
    "max_attempts",
    "retry_backoff",
    "restart",
    "backoff",
    "max_restarts",
    "period_s",
    "on_exhausted",
    "events",
    "rotate_bytes",
    "keep",
    "heartbeat",
    "interval_s",
    "timeout_s",
    "shutdown_grace_s",
    "arch",
    "$ref",
    "type",
    "anyOf",
    "oneOf",
    "const",
    "",
];

/// Numbers at and past every bound the config has.
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
    30.0,
    3600.0,
    1e9,
    1e9 + 1.0,
    1_000_000_000.000_000_1,
    0.999_999_999,
    1.000_000_001,
    2.0,
    4095.0,
    4096.0,
    4095.5,
    4_294_967_295.0,
    4_294_967_296.0,
    9_007_199_254_740_993.0,
    1.8e19,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    f64::EPSILON,
    -1e300,
];
const INTEGERS: &[i64] = &[
    0,
    1,
    -1,
    2,
    3,
    5,
    4095,
    4096,
    1_000_000,
    1_000_001,
    1_000_000_000,
    1_000_000_001,
    4_294_967_295,
    4_294_967_296,
    i64::MIN,
    i64::MAX,
    i32::MIN as i64,
    i32::MAX as i64,
];

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(FLOATS).prop_map(float),
        prop::sample::select(INTEGERS).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(float),
        (0.0..2e9f64).prop_map(float),
        (0.0..1.5f64).prop_map(float),
    ]
}

/// A JSON number (null for NaN and the infinities, which JSON cannot hold).
fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "exit",
            "disable",
            "x86_64",
            "aarch64",
            "g",
            "state",
            ".",
            "..",
            "/",
            "a\u{0}b",
            "sqlite",
            "postgres",
            "postgres://u:p@h/db",
            "\u{202e}",
            "ß",
            "groups[0]",
            "a b",
        ])
        .prop_map(String::from),
        "[a-z_]{0,12}",
        any::<String>(),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(String::from),
        1 => string(),
    ]
}

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        number(),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a parsed config; `usize`s pick a node (modulo how many there are).
#[derive(Clone, Debug)]
enum Mutation {
    /// Any node becomes any value.
    Replace(usize, Value),
    /// A number node becomes another number (often out of range).
    Number(usize, Value),
    /// A string node becomes another string.
    Text(usize, String),
    /// An object loses a key, or an array an element.
    Remove(usize, usize),
    /// An object gains a key (known or not), or an array an element.
    Insert(usize, String, Value),
    /// A node is wrapped in `depth` arrays or one-key objects.
    Nest(usize, usize, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), json()).prop_map(|(at, v)| Mutation::Replace(at, v)),
        4 => (any::<usize>(), number()).prop_map(|(at, v)| Mutation::Number(at, v)),
        1 => (any::<usize>(), string()).prop_map(|(at, s)| Mutation::Text(at, s)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(at, i)| Mutation::Remove(at, i)),
        2 => (any::<usize>(), key(), json()).prop_map(|(at, k, v)| Mutation::Insert(at, k, v)),
        1 => (any::<usize>(), 1..200usize, any::<bool>())
            .prop_map(|(at, depth, array)| Mutation::Nest(at, depth, array)),
    ]
}

/// A valid config, mutated, written out compact or pretty.
fn mutated_config() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![FULL, MINIMAL, POSTGRES]),
        prop::collection::vec(mutation(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(base, mutations, pretty)| {
            let mut value: Value = serde_json::from_str(base).expect("the bases are valid JSON");
            for m in &mutations {
                mutate(&mut value, m);
            }
            if pretty {
                serde_json::to_string_pretty(&value)
            } else {
                serde_json::to_string(&value)
            }
            .expect("a Value always serialises")
        })
}

/// One step of a path into a JSON value.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// The paths of every node of `value` that `pick` selects, in document order.
fn paths(value: &Value, pick: &dyn Fn(&Value) -> bool) -> Vec<Vec<Step>> {
    fn walk(
        value: &Value,
        path: &mut Vec<Step>,
        pick: &dyn Fn(&Value) -> bool,
        out: &mut Vec<Vec<Step>>,
    ) {
        if pick(value) {
            out.push(path.clone());
        }
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Step::Index(i));
                    walk(item, path, pick, out);
                    path.pop();
                }
            }
            Value::Object(object) => {
                for (k, item) in object {
                    path.push(Step::Key(k.clone()));
                    walk(item, path, pick, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), pick, &mut out);
    out
}

/// The node at `path`.
fn node<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, step| match (step, v) {
        (Step::Key(k), Value::Object(object)) => object.get_mut(k),
        (Step::Index(i), Value::Array(items)) => items.get_mut(*i),
        _ => None,
    })
}

/// The node number `at` (modulo their count) among those `pick` selects, if any.
fn pick<'a>(
    value: &'a mut Value,
    at: usize,
    pick: &dyn Fn(&Value) -> bool,
) -> Option<&'a mut Value> {
    let all = paths(value, pick);
    if all.is_empty() {
        return None;
    }
    let path = all[at % all.len()].clone();
    node(value, &path)
}

fn mutate(value: &mut Value, m: &Mutation) {
    match m {
        Mutation::Replace(at, v) => {
            if let Some(n) = pick(value, *at, &|_| true) {
                *n = v.clone();
            }
        }
        Mutation::Number(at, v) => {
            if let Some(n) = pick(value, *at, &Value::is_number) {
                *n = v.clone();
            }
        }
        Mutation::Text(at, s) => {
            if let Some(n) = pick(value, *at, &Value::is_string) {
                *n = Value::String(s.clone());
            }
        }
        Mutation::Remove(at, i) => {
            let container = |v: &Value| {
                matches!(v, Value::Array(a) if !a.is_empty())
                    || matches!(v, Value::Object(o) if !o.is_empty())
            };
            match pick(value, *at, &container) {
                Some(Value::Array(items)) => {
                    let i = i % items.len();
                    items.remove(i);
                }
                Some(Value::Object(object)) => {
                    let key = object.keys().nth(i % object.len()).cloned();
                    if let Some(key) = key {
                        object.remove(&key);
                    }
                }
                _ => {}
            }
        }
        Mutation::Insert(at, k, v) => {
            let container = |v: &Value| v.is_array() || v.is_object();
            match pick(value, *at, &container) {
                Some(Value::Array(items)) => items.push(v.clone()),
                Some(Value::Object(object)) => {
                    object.insert(k.clone(), v.clone());
                }
                _ => {}
            }
        }
        Mutation::Nest(at, depth, array) => {
            if let Some(n) = pick(value, *at, &|_| true) {
                let mut inner = n.take();
                for _ in 0..*depth {
                    inner = if *array {
                        Value::Array(vec![inner])
                    } else {
                        Value::Object(Map::from_iter([("a".to_string(), inner)]))
                    };
                }
                *n = inner;
            }
        }
    }
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
