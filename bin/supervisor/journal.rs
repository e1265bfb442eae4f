//! The outcomes journal: `<state_dir>/outcomes.journal`, the outcomes that wait for the
//! store (see `pending.rs`), one JSON object a line, rewritten (and fsynced) whenever
//! they change and removed once none waits. A supervisor that stops or dies while some
//! wait leaves it behind; the next run on the state dir stores them first, under the
//! owner that ran them, before it takes back the jobs of dead supervisors, so an
//! attempt that ended is never run again for want of its outcome.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::pending::Waiting;

/// The journal of a state dir.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("outcomes.journal")
}

/// Write `waiting` as the whole journal, atomically (a temporary file, fsynced, renamed
/// over it); no journal at all when nothing waits.
pub fn save<'a>(path: &Path, waiting: impl Iterator<Item = &'a Waiting>) -> io::Result<()> {
    let mut lines = Vec::new();
    for w in waiting {
        serde_json::to_writer(&mut lines, w).map_err(io::Error::other)?;
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

/// The outcomes a journal holds, in order; a line that does not parse (a torn last line,
/// damage) is skipped with a warning.
pub fn load(path: &Path) -> io::Result<Vec<Waiting>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Waiting>(&line) {
            Ok(w) => out.push(w),
            Err(e) => log::warn!("{}: line {}: skipped: {e}", path.display(), n + 1),
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
        save(&path, both.iter()).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].job, back[1].job), (1, 2));
        assert_eq!(back[1].owner, 7);
        assert_eq!(
            back[1].next,
            supervisor_store::AfterAttempt::Retry { at: 12.5 }
        );
        assert_eq!(back[0].events, [finished(1)]);
        // Held events are `[name, {fields}]` pairs on disk, as before `EventRecord`.
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""events":[["job_finished",{""#), "{text}");
        // A torn line is skipped.
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("{\"owner\": 7, \"job\"");
        fs::write(&path, text).unwrap();
        assert_eq!(load(&path).unwrap().len(), 2);
        save(&path, [].iter()).unwrap();
        assert!(!path.exists());
        assert!(load(&path).unwrap().is_empty());
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
        let back = load(&path).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].job, 9);
        let names: Vec<_> = back[0].events.iter().map(EventRecord::name).collect();
        assert_eq!(names, ["job_finished", "job_dead", "unknown"]);
        // Saved again, the unknown one (which cannot be written anyway) is left out.
        save(&path, back.iter()).unwrap();
        assert_eq!(load(&path).unwrap()[0].events.len(), 2);
    }
}
