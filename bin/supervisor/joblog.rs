//! A job's log on disk: `<logs>/<id>.log` holds the output of all its attempts, one after
//! the other, and `<logs>/<id>.attempts` says where each attempt began, so that one
//! attempt's output can be shown without markers written into the job's own output.
//!
//! A first attempt is not written down (it begins at 0), which keeps the common case to
//! one file a job; every later attempt appends a line `ATTEMPT OFFSET`, even at offset
//! 0 (the attempts before it wrote nothing: without the line, the first attempt's range
//! would run on into this one's output). So an attempt without a line began at 0, and
//! every attempt ends where the next later one that has a line begins (or at the log's
//! end).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The most lines of an attempts file that are read (a job has at most
/// `bounds::MAX_ATTEMPTS` attempts; a file damaged by hand is not read past this).
const MAX_LINES: usize = 1_000_000;

/// `<logs>/<id>.log`.
pub fn log_path(logs: &Path, id: i64) -> PathBuf {
    logs.join(format!("{id}.log"))
}

/// `<logs>/<id>.attempts`.
pub fn attempts_path(logs: &Path, id: i64) -> PathBuf {
    logs.join(format!("{id}.attempts"))
}

/// Write down that `attempt` of job `id` begins at byte `offset` of its log (nothing
/// for a first attempt on an empty log: see the module docs).
pub fn note_attempt_start(logs: &Path, id: i64, attempt: u32, offset: u64) -> io::Result<()> {
    if offset == 0 && attempt <= 1 {
        return Ok(());
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(attempts_path(logs, id))?;
    f.write_all(format!("{attempt} {offset}\n").as_bytes())
}

/// Where each attempt written down began, from the attempts file's text; lines that do
/// not read are skipped. A later line for the same attempt wins.
fn starts(text: &str) -> BTreeMap<u32, u64> {
    text.lines()
        .take(MAX_LINES)
        .filter_map(|line| {
            let (a, o) = line.trim().split_once(' ')?;
            Some((a.parse().ok()?, o.parse().ok()?))
        })
        .collect()
}

/// The byte range `[start, end)` of `attempt`'s output in a log of `len` bytes, given
/// what the attempts file says (`text`, empty when there is none).
pub fn attempt_range(text: &str, attempt: u32, len: u64) -> (u64, u64) {
    let starts = starts(text);
    let start = starts.get(&attempt).copied().unwrap_or(0).min(len);
    let end = starts
        .range(attempt.saturating_add(1)..)
        .map(|(_, &o)| o)
        .next()
        .unwrap_or(len)
        .clamp(start, len);
    (start, end)
}

/// Delete a job's log and its attempts file (either may be missing).
pub fn remove(logs: &Path, id: i64) -> io::Result<()> {
    for path in [log_path(logs, id), attempts_path(logs, id)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_without_a_line_began_on_an_empty_log() {
        // One attempt, never written down: the whole log.
        assert_eq!(attempt_range("", 1, 10), (0, 10));
        // Attempt 1 wrote 4 bytes, attempt 2 wrote nothing, attempt 3 wrote 6.
        let text = "2 4\n3 4\n";
        assert_eq!(attempt_range(text, 1, 10), (0, 4));
        assert_eq!(attempt_range(text, 2, 10), (4, 4));
        assert_eq!(attempt_range(text, 3, 10), (4, 10));
        // An attempt with no line after ones with lines cannot be (its log was not
        // empty): the caller checks the attempt against the job's; the answer is the
        // whole log, not a panic.
        assert_eq!(attempt_range(text, 4, 10), (0, 10));
    }

    #[test]
    fn a_retry_after_attempts_that_wrote_nothing_is_written_down_at_0() {
        // Attempt 1 wrote nothing, attempt 2 wrote 4 bytes, attempt 3 wrote 6.
        let dir = tempfile::tempdir().unwrap();
        note_attempt_start(dir.path(), 7, 1, 0).unwrap();
        note_attempt_start(dir.path(), 7, 2, 0).unwrap();
        note_attempt_start(dir.path(), 7, 3, 4).unwrap();
        let text = std::fs::read_to_string(attempts_path(dir.path(), 7)).unwrap();
        assert_eq!(text, "2 0\n3 4\n");
        assert_eq!(attempt_range(&text, 1, 10), (0, 0));
        assert_eq!(attempt_range(&text, 2, 10), (0, 4));
        assert_eq!(attempt_range(&text, 3, 10), (4, 10));
    }

    #[test]
    fn damaged_lines_and_offsets_past_the_end_are_harmless() {
        let text = "x y\n2 999\n\n3\n-1 5\n";
        assert_eq!(attempt_range(text, 1, 10), (0, 10));
        assert_eq!(attempt_range(text, 2, 10), (10, 10));
    }

    #[test]
    fn noting_and_removing_round_trip_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        note_attempt_start(dir.path(), 7, 1, 0).unwrap();
        assert!(
            !attempts_path(dir.path(), 7).exists(),
            "an empty log is implied"
        );
        note_attempt_start(dir.path(), 7, 2, 12).unwrap();
        note_attempt_start(dir.path(), 7, 3, 30).unwrap();
        let text = std::fs::read_to_string(attempts_path(dir.path(), 7)).unwrap();
        assert_eq!(attempt_range(&text, 2, 40), (12, 30));
        std::fs::write(log_path(dir.path(), 7), "x").unwrap();
        remove(dir.path(), 7).unwrap();
        assert!(!log_path(dir.path(), 7).exists() && !attempts_path(dir.path(), 7).exists());
        remove(dir.path(), 7).unwrap();
    }
}
