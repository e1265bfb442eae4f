//! `locate`: the state dir, store and events file of a config file, found even when the
//! file has errors, exactly where `load` would put them when it has none.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use supervisor_config::{load, locate, Locations, StoreConfig};

/// A folder of its own under the system's temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "supervisor-config-locate-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// Writes `text` as `supervisor.json`; its path.
    fn config(&self, text: &str) -> PathBuf {
        let path = self.0.join("supervisor.json");
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sqlite(path: &Path) -> StoreConfig {
    StoreConfig::Sqlite {
        path: path.to_path_buf(),
    }
}

fn with_groups(mut top: Value) -> String {
    top["groups"] = json!([{"name": "a"}]);
    top.to_string()
}

#[test]
fn a_valid_file_is_located_as_load_resolves_it() {
    let dir = Dir::new("valid");
    for top in [
        json!({}),
        json!({"state_dir": "var/../run"}),
        json!({"state_dir": "/srv/sv", "events": {"keep": 2}}),
        json!({"state_dir": "s", "store": {"sqlite": {}}, "events": {"path": "./ev/e.jsonl"}}),
        json!({"store": {"sqlite": {"path": "db/jobs.db"}}}),
        json!({"store": {"postgres": {"url": "postgres://db/jobs"}}}),
    ] {
        let path = dir.config(&with_groups(top.clone()));
        let loaded = load(&path).unwrap_or_else(|e| panic!("{top}: {e}"));
        assert_eq!(locate(&path).unwrap(), loaded.locations(), "{top}");
        assert!(loaded.locations().guessed.is_empty());
    }
}

#[test]
fn other_errors_are_ignored() {
    let dir = Dir::new("other-errors");
    let path = dir.config(
        &json!({
            "state_dir": "st",
            "events": {"path": "ev.jsonl", "keep": -1, "colour": "red"},
            "store": {"sqlite": {"path": "j.db", "wal": true}},
            "groups": [{"name": "a", "max_workers": -1}, {"name": "a"}],
            "heartbeat": "often",
            "unknown": 1,
        })
        .to_string(),
    );
    assert!(load(&path).is_err());
    assert_eq!(
        locate(&path).unwrap(),
        Locations {
            path: path.clone(),
            state_dir: dir.0.join("st"),
            store: sqlite(&dir.0.join("j.db")),
            events: dir.0.join("ev.jsonl"),
            guessed: vec![],
        }
    );
    // No `groups` at all: the locations are still known.
    let path = dir.config(r#"{"state_dir": "/srv/x"}"#);
    let found = locate(&path).unwrap();
    assert_eq!(found.state_dir, Path::new("/srv/x"));
    assert_eq!(found.events, Path::new("/srv/x/events.jsonl"));
    assert_eq!(found.store, sqlite(Path::new("/srv/x/jobs.db")));
    assert!(found.guessed.is_empty());
}

#[test]
fn unreadable_keys_take_their_defaults_and_are_named() {
    let dir = Dir::new("unreadable-keys");
    let cases = [
        (json!({"state_dir": 5}), vec!["state_dir"]),
        (json!({"state_dir": ""}), vec!["state_dir"]),
        (
            json!({"store": {"sqlite": {"path": 1}}, "events": {"path": ""}}),
            vec!["store.sqlite.path", "events.path"],
        ),
        (
            json!({"store": {"sqlite": {}, "postgres": {"url": "x"}}}),
            vec!["store"],
        ),
        (
            json!({"store": {"postgres": {}}}),
            vec!["store.postgres.url"],
        ),
        (
            json!({"store": "sqlite", "events": []}),
            vec!["store", "events"],
        ),
    ];
    for (top, guessed) in cases {
        let path = dir.config(&with_groups(top.clone()));
        let found = locate(&path).unwrap();
        let state = dir.0.join("state");
        assert_eq!(found.guessed, guessed, "{top}");
        assert_eq!(found.state_dir, state, "{top}");
        assert_eq!(found.store, sqlite(&state.join("jobs.db")), "{top}");
        assert_eq!(found.events, state.join("events.jsonl"), "{top}");
    }
}

#[test]
fn a_file_that_is_no_json_object_gives_the_defaults_next_to_it() {
    let dir = Dir::new("no-object");
    let missing = dir.0.join("missing.json");
    for path in [
        dir.config("{\"groups\": [}, \"state_dir\": \"elsewhere\""),
        dir.config("[1, 2]"),
        dir.config(""),
        missing,
    ] {
        let found = locate(&path).unwrap();
        let state = dir.0.join("state");
        assert_eq!(
            found,
            Locations {
                path: path.clone(),
                state_dir: state.clone(),
                store: sqlite(&state.join("jobs.db")),
                events: state.join("events.jsonl"),
                guessed: vec!["state_dir".into(), "store".into(), "events".into()],
            }
        );
    }
}

#[test]
fn a_half_edited_file_still_says_where_its_state_is() {
    // What reads before the first syntax error counts (the rest may say more: a guess).
    let dir = Dir::new("half-edited");
    let path = dir.config("{\"state_dir\": \"st\",\n  \"groups\": [{\"name\": \"a\",}]\n}");
    assert!(load(&path).is_err());
    let state = dir.0.join("st");
    assert_eq!(
        locate(&path).unwrap(),
        Locations {
            path: path.clone(),
            state_dir: state.clone(),
            store: sqlite(&state.join("jobs.db")),
            events: state.join("events.jsonl"),
            guessed: vec!["store".into(), "events".into()],
        }
    );
    let path = dir.config(
        "{\"state_dir\": \"/srv/s\", \"events\": {\"path\": \"e.jsonl\"},\n \"store\": {\"sqlite\": {\"path\": \"j.db\"}}, \"groups\": [",
    );
    let found = locate(&path).unwrap();
    assert_eq!(found.state_dir, Path::new("/srv/s"));
    assert_eq!(found.events, dir.0.join("e.jsonl"));
    assert_eq!(found.store, sqlite(&dir.0.join("j.db")));
    assert!(found.guessed.is_empty(), "{found:?}");
}

#[test]
fn a_relative_config_path_is_made_absolute() {
    let found = locate(Path::new("no-such-dir/supervisor.json")).unwrap();
    assert!(found.path.is_absolute(), "{found:?}");
    assert!(found.state_dir.is_absolute(), "{found:?}");
    assert!(found.state_dir.ends_with("no-such-dir/state"), "{found:?}");
}
