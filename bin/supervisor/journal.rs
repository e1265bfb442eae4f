//! The outcomes journal: `<state_dir>/outcomes.journal`, the outcomes that wait for the
//! store (see `pending.rs`), one JSON object a line, rewritten (and fsynced) whenever
//! they change and removed once none waits. A supervisor that stops or dies while some
//! wait leaves it behind; the next run on the state dir stores them first, under the
//! owner that ran them, before it takes back the jobs of dead supervisors, so an
//! attempt that ended is never run again for want of its outcome. Each line names the
//! store its outcome belongs to (`store`, as `StoreConfig::describe` says it): a run
//! on another store cannot store it, and refuses to start rather than drop it. A run
//! that stopped with outcomes still waiting, or could not give its running jobs back
//! (the store locked), ends the journal with a line `{"stopped": INSTANCE, "store": ..}`:
//! the next run gives that instance's jobs back once the outcomes are stored, as the
//! stop would have, rather than count the stop as the death of a supervisor.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::pending::Waiting;

/// The journal of a state dir.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("outcomes.journal")
}

/// An outcome as the journal keeps it.
pub struct Journaled {
    /// The store it belongs to (`None`: a journal of an earlier version, which did not
    /// say).
    pub store: Option<String>,
    pub waiting: Waiting,
}

/// What a journal holds.
#[derive(Default)]
pub struct Loaded {
    pub outcomes: Vec<Journaled>,
    /// Instances that stopped (of the store named with each) without giving their
    /// running jobs back.
    pub stopped: Vec<(i64, Option<String>)>,
}

/// Write `waiting`, outcomes of jobs of `store`, as the whole journal, atomically (a
/// temporary file, fsynced, renamed over it), then `stopped`, an instance of `store`
/// that stopped without giving its running jobs back; no journal at all when there is
/// nothing to say.
pub fn save<'a>(
    path: &Path,
    store: &str,
    waiting: impl Iterator<Item = &'a Waiting>,
    stopped: Option<i64>,
) -> io::Result<()> {
    let mut lines = Vec::new();
    for w in waiting {
        let mut line = serde_json::to_value(w).map_err(io::Error::other)?;
        if let Some(fields) = line.as_object_mut() {
            fields.insert("store".into(), store.into());
        }
        serde_json::to_writer(&mut lines, &line).map_err(io::Error::other)?;
        lines.push(b'\n');
    }
    if let Some(instance) = stopped {
        let line = serde_json::json!({"stopped": instance, "store": store});
        serde_json::to_writer(&mut lines, &line).map_err(io::Error::other)?;
        lines.push(b'\n');
    }
    if lines.is_empty() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("journal.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(&lines)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What a journal holds, in order; a line that does not parse (a torn last line, damage,
/// bytes that are not UTF-8) is skipped with a warning.
pub fn load(path: &Path) -> io::Result<Loaded> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e),
    };
    let mut out = Loaded::default();
    for (n, line) in BufReader::new(f).split(b'\n').enumerate() {
        let line = line?;
        if line.trim_ascii().is_empty() {
            continue;
        }
        let read = serde_json::from_slice::<serde_json::Value>(&line).and_then(|v| {
            let store = v.get("store").and_then(|s| s.as_str()).map(str::to_owned);
            if let Some(instance) = v.get("stopped").and_then(|i| i.as_i64()) {
                out.stopped.push((instance, store));
                return Ok(());
            }
            let waiting = serde_json::from_value::<Waiting>(v)?;
            out.outcomes.push(Journaled { store, waiting });
            Ok(())
        });
        if let Err(e) = read {
            log::warn!("{}: line {}: skipped: {e}", path.display(), n + 1);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EventRecord, JobOutcome};

    fn finished(job: i64) -> EventRecord {
        EventRecord::JobFinished {
            job_id: job,
            group: "g".into(),
            attempt: 2,
            outcome: JobOutcome::Failed,
            exit_code: Some(3),
            signal: None,
            duration_s: 0.25,
            start_error: None,
            reason: None,
        }
    }

    #[test]
    fn saved_outcomes_load_back_in_order_and_none_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let w = |job| Waiting {
            owner: 7,
            job,
            attempt: 2,
            outcome: supervisor_store::OutcomeRecord {
                kind: supervisor_store::OutcomeKind::Failed,
                exit_code: Some(3),
                signal: None,
                start_error: None,
                reason: None,
            },
            next: supervisor_store::AfterAttempt::Retry { at: 12.5 },
            at: Some(10.0),
            events: vec![finished(job)],
        };
        let both = [w(1), w(2)];
        save(&path, "sqlite /s/jobs.db", both.iter(), Some(5)).unwrap();
        let loaded = load(&path).unwrap();
        let back = &loaded.outcomes;
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].waiting.job, back[1].waiting.job), (1, 2));
        assert_eq!(back[1].waiting.owner, 7);
        assert_eq!(back[1].waiting.at, Some(10.0));
        assert_eq!(
            back[1].waiting.next,
            supervisor_store::AfterAttempt::Retry { at: 12.5 }
        );
        assert_eq!(back[0].waiting.events, [finished(1)]);
        // Each names its store, and so does the run that stopped.
        assert!(back
            .iter()
            .all(|j| j.store.as_deref() == Some("sqlite /s/jobs.db")));
        assert_eq!(loaded.stopped, [(5, Some("sqlite /s/jobs.db".to_string()))]);
        // Held events are `[name, {fields}]` pairs on disk, as before `EventRecord`.
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""events":[["job_finished",{""#), "{text}");
        // A torn line is skipped, even one torn inside a character.
        let mut text = fs::read(&path).unwrap();
        text.extend_from_slice(b"{\"owner\": 7, \"job\": \"\xc3");
        fs::write(&path, text).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!((loaded.outcomes.len(), loaded.stopped.len()), (2, 1));
        // A line of an earlier version (no store, no time) still loads.
        let old = r#"{"owner":7,"job":3,"attempt":1,"outcome":{"kind":"succeeded","exit_code":0,"signal":null},"next":"done","events":[]}"#;
        fs::write(&path, format!("{old}\n")).unwrap();
        let back = load(&path).unwrap().outcomes;
        assert_eq!(
            (back.len(), back[0].store.as_deref(), back[0].waiting.at),
            (1, None, None)
        );
        // A stop alone is worth a journal; nothing at all is not.
        save(&path, "x", [].iter(), Some(3)).unwrap();
        assert_eq!(load(&path).unwrap().stopped.len(), 1);
        save(&path, "x", [].iter(), None).unwrap();
        assert!(!path.exists());
        assert!(load(&path).unwrap().outcomes.is_empty());
    }

    #[test]
    fn a_journal_of_an_earlier_version_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        // As the version before typed event records wrote it: the events as name and
        // fields, one of them an event this version does not know.
        let outcome = supervisor_store::OutcomeRecord {
            kind: supervisor_store::OutcomeKind::Failed,
            exit_code: Some(1),
            signal: None,
            start_error: None,
            reason: None,
        };
        let events = r#"[["job_finished",{"job_id":9,"group":"g","attempt":1,"outcome":"failed","exit_code":1,"signal":null,"duration_s":0.5,"start_error":null}],["job_dead",{"job_id":9,"attempts":1}],["job_frobbed",{"job_id":9}]]"#;
        let line = format!(
            r#"{{"owner":3,"job":9,"attempt":1,"outcome":{},"next":{},"events":{events}}}"#,
            serde_json::to_string(&outcome).unwrap(),
            serde_json::to_string(&supervisor_store::AfterAttempt::Dead).unwrap(),
        );
        fs::write(&path, format!("{line}\n")).unwrap();
        let back = load(&path).unwrap().outcomes;
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].waiting.job, 9);
        let names: Vec<_> = back[0]
            .waiting
            .events
            .iter()
            .map(EventRecord::name)
            .collect();
        assert_eq!(names, ["job_finished", "job_dead", "unknown"]);
        // Saved again, the unknown one (which cannot be written anyway) is left out.
        save(&path, "x", back.iter().map(|j| &j.waiting), None).unwrap();
        assert_eq!(load(&path).unwrap().outcomes[0].waiting.events.len(), 2);
    }
}
