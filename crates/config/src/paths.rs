//! The files a supervisor writes, checked when the config is loaded, so that `check`
//! refuses what would wreck the state at `run`:
//!
//! - the events file (with its rotated files `<events.path>.N`) and the SQLite store
//!   (with SQLite's `-wal`, `-shm` and `-journal` files) must not be the same file as one
//!   another, as one of the files the supervisor keeps in its state dir under fixed names
//!   ([`STATE_FILES`]), as the config file or the HTTP token file; neither may be inside
//!   the job logs' folder (`<state_dir>/logs`), nor be the state dir or a folder above it;
//! - what exists already must be of the right kind: `state_dir` (and its `logs`) a
//!   directory, the events file and the SQLite store regular files. Nothing needs to
//!   exist.
//!
//! Paths are compared as resolved (relative to the config file's folder), with `..`
//! folded, and again with symbolic links followed as far as the path exists (and, for
//! files that exist, by device and inode, so that a hard link is the same file too).
//! A path the process may not look into is compared as written.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::validate::Problem;
use crate::StoreConfig;

/// The files the supervisor keeps in its state dir under fixed names, with what they
/// are. The names are string literals of `bin/supervisor` (`run/startup.rs`,
/// `commands/mod.rs`, `journal.rs`, `http/mod.rs`): a new one there belongs here too.
pub const STATE_FILES: &[(&str, &str)] = &[
    ("supervisor.pid", "the pidfile"),
    (
        "supervisor.events",
        "the note of where the running supervisor writes its events",
    ),
    ("supervisor.events.tmp", "the temporary file of that note"),
    ("outcomes.journal", "the outcomes journal"),
    (
        "outcomes.journal.tmp",
        "the temporary file of the outcomes journal",
    ),
    ("http.addr", "the HTTP server's address file"),
    ("reload.answer", "the supervisor's last answer to a reload"),
    ("reload.answer.tmp", "the temporary file of that answer"),
];

/// The folder of the job logs (`<state_dir>/logs/<job id>.log`), inside the state dir.
pub(crate) const LOGS_DIR: &str = "logs";

/// The files SQLite keeps next to a database: the suffix of each, and what it is.
pub const SQLITE_FILES: &[(&str, &str)] = &[
    ("-wal", "write-ahead log"),
    ("-shm", "shared-memory index"),
    ("-journal", "rollback journal"),
];

/// The problems of the paths of config object `root`, read from the file at the
/// absolute path `config_file`. None when a path key cannot be read (the walk of the
/// schema reports it).
pub(crate) fn check(root: &Map<String, Value>, config_file: &Path) -> Vec<Problem> {
    let found = crate::locations_in(root, config_file.to_path_buf(), Vec::new());
    let base = config_file.parent().unwrap_or(Path::new("/"));
    // (Not a string: the walk reports it.)
    let token_file = match root.get("http").and_then(|h| h.get("token_file")) {
        Some(Value::String(t)) if !t.is_empty() => Some(crate::resolve(base, t)),
        _ => None,
    };
    let store = match &found.store {
        StoreConfig::Sqlite { path } => Some(path),
        StoreConfig::Postgres { .. } => None,
    };
    let paths = [Some(&found.state_dir), Some(&found.events), store];
    // A NUL is reported by the walk; no system call could take such a path.
    let nul = paths
        .iter()
        .flatten()
        .any(|p| p.as_os_str().as_encoded_bytes().contains(&0));
    if !found.guessed.is_empty() || nul {
        return Vec::new();
    }
    let state_dir_given = root.contains_key("state_dir");
    let events_given = root.get("events").and_then(|e| e.get("path")).is_some();
    let store_given = (root.get("store").and_then(|s| s.get("sqlite")))
        .and_then(|s| s.get("path"))
        .is_some();

    let mut problems = kinds(
        (&found.state_dir, state_dir_given),
        (&found.events, events_given),
        store.map(|s| (s.as_path(), store_given)),
    );

    // A path of the wrong kind is that key's problem; what it collides with can wait
    // until it is fixed (a state dir that is a file has everything inside it wrong).
    let wrong = |problems: &[Problem], key: &str| problems.iter().any(|p| p.path == key);
    if wrong(&problems, "state_dir") {
        return problems;
    }
    let state = state_party(&found.state_dir, config_file, token_file.as_deref());
    let events =
        (!wrong(&problems, "events.path")).then(|| events_party(&found.events, events_given));
    let store = store
        .filter(|_| !wrong(&problems, "store.sqlite.path"))
        .map(|s| store_party(s, store_given));
    // One problem a key: the first collision found.
    for party in [&events, &store].into_iter().flatten() {
        problems.extend(conflict(party, &state));
    }
    if let (Some(events), Some(store)) = (&events, &store) {
        // Both defaults differ; a key given is the one to change.
        let (blamed, other) = match events_given || !store_given {
            true => (events, store),
            false => (store, events),
        };
        if !wrong(&problems, blamed.key) {
            problems.extend(conflict(blamed, other));
        }
    }
    problems
}

/// A path as resolved, and the forms it is compared in.
#[derive(Clone)]
struct Place {
    /// As resolved from the config, for messages.
    shown: PathBuf,
    /// With `..` folded.
    lexical: PathBuf,
    /// With symbolic links followed as far as it exists.
    real: PathBuf,
    /// Device and inode, if it exists.
    id: Option<(u64, u64)>,
}

impl Place {
    fn new(path: &Path) -> Place {
        Place {
            shown: path.to_path_buf(),
            lexical: lexical(path),
            real: real(path),
            id: std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino())),
        }
    }

    /// Whether `self` and `other` are the same path (or, both existing, the same file).
    fn same(&self, other: &Place) -> bool {
        self.lexical == other.lexical
            || self.real == other.real
            || self.id.is_some() && self.id == other.id
    }

    /// Whether `self` is strictly inside `other`.
    fn inside(&self, other: &Place) -> bool {
        let within = |a: &Path, b: &Path| a != b && a.starts_with(b);
        within(&self.lexical, &other.lexical) || within(&self.real, &other.real)
    }

    /// `self`, or the folder above it, that is one of the rotated files of the events
    /// file `events` (`<events>.N`), and whether it is `self`.
    fn rotated_of(&self, events: &Place) -> Option<(PathBuf, bool)> {
        [(&self.lexical, &events.lexical), (&self.real, &events.real)]
            .into_iter()
            .find_map(|(path, events)| {
                let (dir, name) = (events.parent()?, events.file_name()?);
                let found = path.ancestors().find(|p| {
                    p.parent() == Some(dir) && p.file_name().is_some_and(|n| is_rotated(n, name))
                })?;
                Some((found.to_path_buf(), found == path))
            })
    }
}

/// Whether file name `name` is `<events>.N`, N a number (what the events file's rotation
/// renames and removes).
fn is_rotated(name: &OsStr, events: &OsStr) -> bool {
    let (name, events) = (name.as_encoded_bytes(), events.as_encoded_bytes());
    name.strip_prefix(events)
        .and_then(|rest| rest.strip_prefix(b"."))
        .is_some_and(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
}

/// The absolute `path` with `.` dropped and `..` folded into its parent.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The absolute `path` with symbolic links followed: the longest part of it that exists
/// (and can be looked into) made canonical, then the rest folded as [`lexical`] does.
fn real(path: &Path) -> PathBuf {
    let parts: Vec<Component> = path.components().collect();
    for n in (1..=parts.len()).rev() {
        let head: PathBuf = parts[..n].iter().collect();
        if let Ok(mut found) = std::fs::canonicalize(&head) {
            found.extend(&parts[n..]);
            return lexical(&found);
        }
    }
    lexical(path)
}

/// What a member of a [`Party`] is to the others.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A file: nothing else may be it, inside it, or above it.
    File,
    /// The state dir: nothing may be it or above it; inside is where things go.
    StateDir,
    /// The job logs' folder: nothing may be it or inside it.
    Logs,
}

/// One path of a [`Party`].
struct Member {
    place: Place,
    kind: Kind,
    /// How the problem of its own key says it, like `its write-ahead log /x/jobs.db-wal`.
    subject: String,
    /// How the problem of another key names it, like `the pidfile
    /// (<state_dir>/supervisor.pid)`.
    object: String,
}

/// The paths one key brings (the events file, the store), or the fixed ones.
struct Party {
    /// The key its problems are reported at.
    key: &'static str,
    members: Vec<Member>,
    /// The events file, whose rotated files `<path>.N` belong to the party too.
    rotated: Option<Place>,
}

/// How a problem names the rotated files of the events file.
const ROTATED: &str = "the events file's rotated files (<events.path>.N)";

/// How a path that takes its default is told apart in messages.
fn default_note(given: bool, default: &str) -> String {
    match given {
        true => String::new(),
        false => format!(" (its default, {default})"),
    }
}

fn events_party(path: &Path, given: bool) -> Party {
    let place = Place::new(path);
    let note = default_note(given, "<state_dir>/events.jsonl");
    Party {
        key: "events.path",
        members: vec![Member {
            subject: format!("{}{note}", place.shown.display()),
            object: match given {
                true => "the events file (events.path)".to_string(),
                false => {
                    "the events file (<state_dir>/events.jsonl, events.path's default)".to_string()
                }
            },
            kind: Kind::File,
            place: place.clone(),
        }],
        rotated: Some(place),
    }
}

fn store_party(path: &Path, given: bool) -> Party {
    let note = default_note(given, "<state_dir>/jobs.db");
    let mut members = vec![Member {
        place: Place::new(path),
        kind: Kind::File,
        subject: format!("{}{note}", path.display()),
        object: match given {
            true => "the SQLite store (store.sqlite.path)".to_string(),
            false => {
                "the SQLite store (<state_dir>/jobs.db, store.sqlite.path's default)".to_string()
            }
        },
    }];
    for (suffix, what) in SQLITE_FILES {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        members.push(Member {
            subject: format!("its {what} {}", file.display()),
            object: format!("the SQLite store's {what} (<store.sqlite.path>{suffix})"),
            kind: Kind::File,
            place: Place::new(&file),
        });
    }
    Party {
        key: "store.sqlite.path",
        members,
        rotated: None,
    }
}

/// The state dir, its job logs' folder and fixed files, the config file and the HTTP
/// token file: paths no key of the events file or the store may take.
fn state_party(state_dir: &Path, config_file: &Path, token_file: Option<&Path>) -> Party {
    let member = |path: &Path, kind, object: String| Member {
        place: Place::new(path),
        kind,
        subject: path.display().to_string(),
        object,
    };
    let mut members = vec![
        member(
            state_dir,
            Kind::StateDir,
            "the state dir (state_dir)".into(),
        ),
        member(
            &state_dir.join(LOGS_DIR),
            Kind::Logs,
            format!("the job logs' folder (<state_dir>/{LOGS_DIR})"),
        ),
    ];
    for (name, what) in STATE_FILES {
        members.push(member(
            &state_dir.join(name),
            Kind::File,
            format!("{what} (<state_dir>/{name})"),
        ));
    }
    members.push(member(config_file, Kind::File, "the config file".into()));
    if let Some(token) = token_file {
        members.push(member(
            token,
            Kind::File,
            "the HTTP token file (http.token_file)".into(),
        ));
    }
    Party {
        key: "state_dir",
        members,
        rotated: None,
    }
}

/// The first way the files of `blamed` (its members are files) collide with the paths
/// of `other`, as a problem at `blamed`'s key.
fn conflict(blamed: &Party, other: &Party) -> Option<Problem> {
    let message = collision(blamed, other)?;
    Some(Problem {
        path: blamed.key.to_string(),
        message,
    })
}

fn collision(blamed: &Party, other: &Party) -> Option<String> {
    for a in &blamed.members {
        for b in &other.members {
            if let Some(message) = relation(a, b) {
                return Some(message);
            }
        }
        if let Some((found, itself)) = other.rotated.as_ref().and_then(|e| a.place.rotated_of(e)) {
            return Some(match itself {
                true => format!("{} is also one of {ROTATED}", a.subject),
                false => format!(
                    "{} is inside {}, one of {ROTATED}",
                    a.subject,
                    found.display()
                ),
            });
        }
    }
    let events = blamed.rotated.as_ref()?;
    other.members.iter().find_map(|b| {
        let (found, itself) = b.place.rotated_of(events)?;
        Some(match itself {
            true => format!("its rotated file {} is also {}", found.display(), b.object),
            false => format!(
                "{} {} is inside {}, one of its rotated files (<events.path>.N)",
                b.object,
                b.place.shown.display(),
                found.display()
            ),
        })
    })
}

/// How file `a` collides with `b`, if it does.
fn relation(a: &Member, b: &Member) -> Option<String> {
    if a.place.same(&b.place) {
        return Some(format!("{} is also {}", a.subject, b.object));
    }
    if a.place.inside(&b.place) {
        return match b.kind {
            Kind::StateDir => None,
            Kind::Logs => Some(format!("{} is inside {}", a.subject, b.object)),
            Kind::File => Some(format!(
                "{} is inside {}, which is {}",
                a.subject,
                b.place.shown.display(),
                b.object
            )),
        };
    }
    if b.place.inside(&a.place) {
        return Some(format!(
            "{} would have to be a directory: {} {} is inside it",
            a.subject,
            b.object,
            b.place.shown.display()
        ));
    }
    None
}

/// The problems of what exists already at the state dir (and its job logs' folder), the
/// events file and the SQLite store, each with whether its key is given. A state dir
/// that cannot be one is the only problem: all the rest is inside it.
fn kinds(
    (state_dir, state_dir_given): (&Path, bool),
    (events, events_given): (&Path, bool),
    store: Option<(&Path, bool)>,
) -> Vec<Problem> {
    let state = [
        (
            state_dir,
            default_note(state_dir_given, "state"),
            "the state dir",
        ),
        (
            &state_dir.join(LOGS_DIR),
            format!(" (the job logs' folder, <state_dir>/{LOGS_DIR})"),
            "it",
        ),
    ];
    for (path, note, what) in state {
        if let Some(problem) = kind("state_dir", path, note, true, what) {
            return vec![problem];
        }
    }
    let mut problems = Vec::new();
    problems.extend(kind(
        "events.path",
        events,
        default_note(events_given, "<state_dir>/events.jsonl"),
        false,
        "the events file",
    ));
    if let Some((store, given)) = store {
        problems.extend(kind(
            "store.sqlite.path",
            store,
            default_note(given, "<state_dir>/jobs.db"),
            false,
            "the SQLite store",
        ));
    }
    problems
}

/// The problem at `key` of `path` (`note` after it in the message) if it exists and is
/// not a directory (`dir`) or a regular file, or cannot exist.
fn kind(key: &str, path: &Path, note: String, dir: bool, what: &str) -> Option<Problem> {
    let must = match dir {
        true => "a directory",
        false => "a regular file",
    };
    let found = match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() == dir && (dir || meta.is_file()) => return None,
        Ok(meta) => format!("is {}; {what} must be {must}", file_kind(&meta)),
        // A folder on the way is a file: it can be neither.
        Err(e) if e.kind() == ErrorKind::NotADirectory => {
            "cannot be created: a folder on its way is not a directory".to_string()
        }
        // Missing, or not ours to look at (a `check` by another user): fine here.
        Err(_) => return None,
    };
    Some(Problem {
        path: key.to_string(),
        message: format!("{}{note} {found}", path.display()),
    })
}

/// What a file that exists is, in words: `a directory`, `a FIFO`, ...
fn file_kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}
