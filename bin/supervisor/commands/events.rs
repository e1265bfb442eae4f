//! `supervisor events [--follow]`: print the events file (human form on a terminal, JSON
//! lines otherwise) and follow it across rotations; and the reading of an events file's
//! tail that `status` shares.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::config::{self, Lenient};
use super::format::human;
use super::CommandError;
use crate::events_file::{lines_lossy, read_line_lossy, rotated};
use crate::record::EventLine;

/// `supervisor events [--follow]`: the current events file as it is; with `--follow`,
/// every event from then on, across rotations, exactly once and in `seq` order.
///
/// The file is polled. When its path names another file (a rotation, or logrotate and a
/// reload), the old one is read to its end and the new one from its top. An event whose
/// `seq` is past the next one expected means whole files went by between two polls:
/// the events in between are read from the rotated files (`<path>.1`, `.2`, ...) first;
/// those already deleted (`events.keep`) are reported on stderr as missing.
pub fn events(path: &Path, follow: bool, as_json: bool) -> Result<(), CommandError> {
    let found = config::locate(path, Lenient::Events)?;
    let mut printer = Printer {
        out: std::io::stdout().lock(),
        human: !as_json && std::io::stdout().is_terminal(),
        last: None,
    };
    let printed = if follow {
        follow_events(&found.events, &mut printer)
    } else {
        print_events(&found.events, &mut printer)
    };
    match printed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How often `events --follow` looks at the file.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Prints events lines, and when following, keeps `seq` continuous.
struct Printer<'a> {
    out: std::io::StdoutLock<'a>,
    /// The human form (on a terminal), else the lines as they are.
    human: bool,
    /// The `seq` of the last event printed while following.
    last: Option<u64>,
}

impl Printer<'_> {
    /// One line as it is (or in human form), skipping blank ones.
    fn print(&mut self, line: &str) -> io::Result<()> {
        if line.trim().is_empty() {
            return Ok(());
        }
        if self.human {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                return writeln!(self.out, "{}", human_event(&v));
            }
        }
        writeln!(self.out, "{line}")
    }

    /// One line of the followed file at `path`: if its `seq` skips some, those come
    /// first, from the rotated files.
    fn follow(&mut self, line: &str, path: &Path) -> io::Result<()> {
        if let Some(seq) = seq_of(line) {
            match self.last {
                Some(last) if seq > last + 1 => self.fill_gap(path, last, seq)?,
                Some(last) if seq <= last => eprintln!(
                    "supervisor: warning: {}: seq went back from {last} to {seq} (the file was \
                     replaced, not rotated); going on from {seq}",
                    path.display()
                ),
                _ => {}
            }
            self.last = Some(seq);
        }
        self.print(line)
    }

    /// Print the events after `last` and before `next` from the files rotated from
    /// `path`, in `seq` order; warn about those no file has any more.
    fn fill_gap(&mut self, path: &Path, last: u64, next: u64) -> io::Result<()> {
        let wanted = next - last - 1;
        let mut found = BTreeMap::new();
        // A rotation under way moves the files while they are looked for; one that
        // gives an incomplete answer is tried again.
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            rotated_events(path, last, next, &mut found);
            if found.len() as u64 == wanted {
                break;
            }
        }
        log::debug!(
            "seq {last} then {next}: {} of the {wanted} events between from rotated files",
            found.len()
        );
        let mut expected = last + 1;
        for (seq, line) in found {
            if seq > expected {
                warn_missing(path, expected, seq - 1);
            }
            self.print(&line)?;
            expected = seq + 1;
        }
        if expected < next {
            warn_missing(path, expected, next - 1);
        }
        Ok(())
    }
}

fn warn_missing(path: &Path, from: u64, to: u64) {
    let what = if from == to {
        format!("event seq {from} is")
    } else {
        format!("events seq {from} to {to} are")
    };
    eprintln!(
        "supervisor: warning: {what} missing: rotated out of {} before they could be read \
         (events.keep)",
        path.display()
    );
}

/// `events` without `--follow`: every complete line of the file.
fn print_events(path: &Path, printer: &mut Printer) -> io::Result<()> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        // No supervisor has run here yet: there are no events, which is not an error.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!(
                "supervisor: no events yet ({} does not exist)",
                path.display()
            );
            return Ok(());
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    // Line by line, each read as it is (a stray byte is U+FFFD, not the end of all).
    let mut reader = BufReader::new(&mut file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = read_line_lossy(&mut reader, &mut line)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        // The end, or a torn last line (being written): left out.
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        let text = line.trim_end_matches('\n');
        printer.print(text.strip_suffix('\r').unwrap_or(text))?;
    }
    printer.out.flush()
}

/// `events --follow`: never returns but on an output error.
fn follow_events(path: &Path, printer: &mut Printer) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut file = match File::open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            log::info!("{}: {e}; waiting for it", path.display());
            None
        }
    };
    let mut ino = file.as_ref().and_then(inode);
    let mut pending = String::new();
    loop {
        if let Some(f) = file.as_mut() {
            follow_lines(f, &mut pending, path, printer)?;
        }
        std::thread::sleep(FOLLOW_POLL);
        // Between a rotation's rename and the new file, the path names nothing.
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if Some(meta.ino()) != ino {
            // Another file: the old one is complete; read its end (a torn last line
            // too: nothing will complete it), then the new one from its top.
            if let Some(f) = file.as_mut() {
                follow_lines(f, &mut pending, path, printer)?;
                if !pending.is_empty() {
                    let line = std::mem::take(&mut pending);
                    printer.follow(&line, path)?;
                    printer.out.flush()?;
                }
            }
            file = File::open(path).ok();
            ino = file.as_ref().and_then(inode);
        } else if let Some(f) = file.as_mut() {
            // Truncated in place (copytruncate): start over.
            if meta.len() < f.stream_position()? {
                f.seek(SeekFrom::Start(0))?;
                pending.clear();
            }
        }
    }
}

/// Print the complete lines that `file` has now, keeping a torn last line in `pending`.
fn follow_lines(
    file: &mut File,
    pending: &mut String,
    path: &Path,
    printer: &mut Printer,
) -> io::Result<()> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    pending.push_str(&String::from_utf8_lossy(&bytes));
    while let Some(i) = pending.find('\n') {
        let line: String = pending.drain(..=i).collect();
        printer.follow(line.trim_end(), path)?;
    }
    printer.out.flush()
}

/// The `seq` of an events line.
fn seq_of(line: &str) -> Option<u64> {
    EventLine::seq_of(line)
}

/// Add to `found` the lines of events after `last` and before `next` from the files
/// rotated from `path`, newest first (`.1`, `.2`, ...), down to one that ends at or
/// before `last`.
///
/// Files only ever move up (`.1` → `.2`) and are opened in that direction, so each file
/// there was at the start is met at least once, even while rotations go on; a number
/// may be missing for a moment (mid-rotation), so the walk goes on past missing ones up
/// to the highest number listed in the folder.
fn rotated_events(path: &Path, last: u64, next: u64, found: &mut BTreeMap<u64, String>) {
    let top = rotated_numbers(path).into_iter().max().unwrap_or(0);
    for n in 1.. {
        let mut file = match File::open(rotated(path, n)) {
            Ok(f) => f,
            Err(_) if n <= top => continue,
            Err(_) => break,
        };
        let Ok(Some((first, end))) = seq_range(&mut file) else {
            continue;
        };
        if end <= last {
            break;
        }
        if first >= next {
            continue;
        }
        if file.seek(SeekFrom::Start(0)).is_err() {
            continue;
        }
        for line in lines_lossy(BufReader::new(file)) {
            if let Some(seq) = seq_of(&line).filter(|s| (last + 1..next).contains(s)) {
                found.entry(seq).or_insert(line);
            }
        }
    }
}

/// The `N`s of the `<path>.N` files in `path`'s folder.
fn rotated_numbers(path: &Path) -> Vec<u32> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_prefix(&prefix)?.parse().ok()
        })
        .collect()
}

/// The `seq` of the first and of the last event of a file (its tail only is read for
/// the last); `None` for a file without events.
fn seq_range(file: &mut File) -> io::Result<Option<(u64, u64)>> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(&mut *file);
    let mut line = String::new();
    let first = loop {
        line.clear();
        if read_line_lossy(&mut reader, &mut line)? == 0 {
            return Ok(None);
        }
        if let Some(seq) = seq_of(line.trim_end()) {
            break seq;
        }
    };
    drop(reader);
    let mut from = file.metadata()?.len().saturating_sub(TAIL_BYTES);
    loop {
        let tail = lines_from(file, from)?;
        if let Some(end) = tail.iter().rev().find_map(|l| seq_of(l)) {
            return Ok(Some((first, end)));
        }
        if from == 0 {
            return Ok(Some((first, first)));
        }
        from = 0;
    }
}

/// How much of the end of an events file is read for its last events.
pub(super) const TAIL_BYTES: u64 = 64 * 1024;

/// The lines of `file` from byte `from` to its end, less the first one when `from` is
/// past the start (a tail may begin mid-line).
pub(super) fn lines_from(file: &mut File, from: u64) -> io::Result<Vec<String>> {
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines = text.lines().skip(usize::from(from > 0));
    Ok(lines.map(str::to_owned).collect())
}

fn inode(f: &File) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| m.ino())
}

/// An events line for a terminal: time, `seq`, name, then every field that is not
/// null. It shows the line as it is, fields and events of newer versions too, so it
/// reads the JSON object rather than its [`EventRecord`](crate::record::EventRecord).
fn human_event(v: &Value) -> String {
    let ts = v["ts"].as_f64().unwrap_or(0.0);
    let secs = ts as u64;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let ms = ((ts - secs as f64) * 1000.0) as u64;
    let mut line = format!(
        "{h:02}:{m:02}:{s:02}.{ms:03} #{:<6} {:<24}",
        v["seq"],
        v["event"].as_str().unwrap_or("?")
    );
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            if matches!(k.as_str(), "seq" | "ts" | "event") || val.is_null() {
                continue;
            }
            line.push_str(&format!(" {k}={}", human(val)));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Lines of events `seqs`, each padded to about `pad` bytes.
    fn lines(seqs: impl IntoIterator<Item = u64>, pad: usize) -> String {
        seqs.into_iter()
            .map(|s| {
                format!(
                    "{}\n",
                    json!({"seq": s, "event": "x", "pad": "p".repeat(pad)})
                )
            })
            .collect()
    }

    #[test]
    fn seq_range_reads_the_first_and_the_last_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e");
        let range = |text: &str| {
            std::fs::write(&path, text).unwrap();
            seq_range(&mut File::open(&path).unwrap()).unwrap()
        };
        assert_eq!(range(""), None);
        assert_eq!(range("torn"), None);
        assert_eq!(range(&lines([7], 0)), Some((7, 7)));
        assert_eq!(
            range(&(lines(3..=9, 10) + "{\"seq\": 10, tor")),
            Some((3, 9))
        );
        // Longer than the tail that is read, and a last line longer than that tail.
        assert_eq!(range(&lines(1..=2000, 100)), Some((1, 2000)));
        assert_eq!(range(&lines(1..=3, 100_000)), Some((1, 3)));
    }

    #[test]
    fn rotated_events_fill_a_gap_from_the_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        // .4 is older than what was read (up to 10), .2 is gone.
        for (n, seqs) in [(4, 1..=5), (3, 6..=12), (1, 21..=25)] {
            std::fs::write(rotated(&path, n), lines(seqs, 0)).unwrap();
        }
        let mut found = BTreeMap::new();
        rotated_events(&path, 10, 24, &mut found);
        assert_eq!(
            found.keys().copied().collect::<Vec<_>>(),
            [11, 12, 21, 22, 23]
        );
        assert_eq!(seq_of(&found[&21]), Some(21));
    }
}
