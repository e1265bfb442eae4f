//! The events file: one JSON object a line, written by the supervisor alone, flushed as
//! each event happens, rotated by size with each new file starting with a snapshot.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::record::{EventLine, EventRecord};

/// The writer of the events file.
#[derive(Debug)]
pub struct EventsFile {
    path: PathBuf,
    file: File,
    size: u64,
    seq: u64,
    rotate_bytes: u64,
    keep: u32,
    /// Who else gets every event as it is written (the HTTP server's feed), if anyone.
    tap: Option<crossbeam_channel::Sender<Tapped>>,
    /// Lines a write failed for (a full disk), oldest first, with their bytes: written
    /// before the next event, in order, their `seq` and `ts` as they were made. At most
    /// [`MAX_UNWRITTEN_BYTES`]: beyond, the oldest are dropped (and said so on stderr).
    unwritten: std::collections::VecDeque<String>,
    unwritten_bytes: usize,
    /// A write failed: the file may end in part of a line.
    maybe_torn: bool,
}

/// The most bytes of events kept in memory while the events file refuses them.
const MAX_UNWRITTEN_BYTES: usize = 16 << 20;

/// An event as written, for the HTTP server: the record and its line (without the
/// newline).
#[derive(Debug, Clone)]
pub struct Tapped {
    pub event: EventLine,
    pub line: std::sync::Arc<str>,
}

/// Wall-clock seconds, as `ts` in every event.
pub fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The `.N` file of a rotation.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Remove the rotated files of `path` numbered past `keep` (`<path>.N`, N > keep); what
/// cannot be listed or removed stays.
fn remove_beyond(path: &Path, keep: u32) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    for entry in entries.flatten() {
        let file = entry.file_name();
        let number = (file.to_str())
            .and_then(|f| f.strip_prefix(&prefix))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        if number.is_some_and(|n| n > u64::from(keep)) {
            if let Err(e) = fs::remove_file(entry.path()) {
                log::warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// `BufRead::read_line`, but a line that is not UTF-8 (a write torn inside a character,
/// a stray byte) is read with U+FFFD for its bad bytes instead of failing: one bad line
/// never hides the others. Returns the bytes read, as `read_line` does.
pub fn read_line_lossy(reader: &mut impl BufRead, line: &mut String) -> io::Result<usize> {
    let mut bytes = Vec::new();
    let n = reader.read_until(b'\n', &mut bytes)?;
    line.push_str(&String::from_utf8_lossy(&bytes));
    Ok(n)
}

/// The lines of `reader` without their ends, each read as [`read_line_lossy`] does; to
/// the end, or to the first error of the reader itself.
pub fn lines_lossy(reader: impl BufRead) -> impl Iterator<Item = String> {
    reader.split(b'\n').map_while(Result::ok).map(|mut bytes| {
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The `seq` of the last complete line of a file, if any.
fn last_seq(path: &Path) -> Option<u64> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    // The last line is short; read the tail only.
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut last = None;
    for line in lines_lossy(BufReader::new(file)) {
        if let Some(seq) = EventLine::seq_of(&line) {
            last = Some(seq);
        }
    }
    last
}

impl EventsFile {
    /// Open the events file for a new run: `seq` continues from the newest file, and a
    /// non-empty file is rotated first so the new one begins with our snapshot.
    pub fn open(path: &Path, rotate_bytes: u64, keep: u32) -> io::Result<EventsFile> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let seq = last_seq(path)
            .or_else(|| last_seq(&rotated(path, 1)))
            .unwrap_or(0);
        let mut ev = EventsFile {
            path: path.to_path_buf(),
            file: Self::open_append(path)?,
            size: 0,
            seq,
            rotate_bytes,
            keep,
            tap: None,
            unwritten: std::collections::VecDeque::new(),
            unwritten_bytes: 0,
            maybe_torn: false,
        };
        ev.size = ev.file.metadata()?.len();
        if ev.size > 0 {
            ev.rotate()?;
        }
        Ok(ev)
    }

    fn open_append(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
    }

    /// The seq of the last event written (0: none yet).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Write one event (`seq`, `ts` and `event` first, then its fields) and flush it,
    /// after those a full disk refused before (kept, in order).
    pub fn write(&mut self, record: EventRecord) -> io::Result<()> {
        let event = EventLine {
            seq: self.seq + 1,
            ts: (wall_now() * 1000.0).round() / 1000.0,
            record,
        };
        let line = event.to_line().map_err(io::Error::other)?;
        self.seq += 1;
        if let Some(tap) = &self.tap {
            // Never blocks (unbounded); a feed gone is no error of ours.
            let _ = tap.send(Tapped {
                event,
                line: line.as_str().into(),
            });
        }
        self.unwritten_bytes += line.len() + 1;
        self.unwritten.push_back(line + "\n");
        let mut dropped = 0;
        while self.unwritten_bytes > MAX_UNWRITTEN_BYTES {
            let Some(old) = self.unwritten.pop_front() else {
                break;
            };
            self.unwritten_bytes -= old.len();
            dropped += 1;
        }
        if dropped > 0 {
            log::error!(
                "the events file refuses writes: {dropped} event(s) dropped, more than \
                 {MAX_UNWRITTEN_BYTES} bytes of them waited"
            );
        }
        self.write_unwritten()
    }

    /// Write the lines that wait, oldest first, each in one write (a reader never sees
    /// half a line from us); the first that fails stays first, with the rest.
    fn write_unwritten(&mut self) -> io::Result<()> {
        if self.maybe_torn && !self.unwritten.is_empty() {
            // The failed write may have left part of its line. What the file holds past
            // our last whole line, shorter than that line, can only be that part: cut
            // it off. Anything else (the file changed under us) is ended with a newline,
            // so that the lines that follow stay whole (readers skip a torn one).
            let len = self.file.metadata()?.len();
            let front = self.unwritten.front().map_or(0, |l| l.len() as u64);
            if len > self.size && len - self.size < front {
                self.file.set_len(self.size)?;
            } else if self.ends_mid_line() {
                self.file.write_all(b"\n")?;
                self.size += 1;
            }
            self.maybe_torn = false;
        }
        while let Some(line) = self.unwritten.front() {
            if let Err(e) = self.file.write_all(line.as_bytes()) {
                self.maybe_torn = true;
                return Err(e);
            }
            self.size += line.len() as u64;
            self.unwritten_bytes -= line.len();
            self.unwritten.pop_front();
        }
        Ok(())
    }

    /// Whether the file's last byte is not a newline.
    fn ends_mid_line(&self) -> bool {
        use std::os::unix::fs::FileExt;
        let Ok(len) = self.file.metadata().map(|m| m.len()) else {
            return false;
        };
        let mut last = [0u8; 1];
        len > 0 && self.file.read_at(&mut last, len - 1).is_ok() && last[0] != b'\n'
    }

    /// Send every event written from now on to `tap` too.
    pub fn set_tap(&mut self, tap: crossbeam_channel::Sender<Tapped>) {
        self.tap = Some(tap);
    }

    /// Whether the file has grown past its rotation size.
    /// New rotation limits (a reload): they apply from the next event on; rotated
    /// files beyond a smaller `keep` go at once.
    pub fn set_limits(&mut self, rotate_bytes: u64, keep: u32) {
        for n in keep + 1..=self.keep {
            if let Err(e) = fs::remove_file(rotated(&self.path, n)).or_else(ignore_missing) {
                log::warn!("cannot remove an old events file: {e}");
            }
        }
        self.rotate_bytes = rotate_bytes;
        self.keep = keep;
    }

    pub fn wants_rotation(&self) -> bool {
        self.size >= self.rotate_bytes
    }

    /// Rotate: `path` → `path.1` → … → `path.keep`; the oldest is dropped. The caller
    /// writes a snapshot first thing into the new file.
    pub fn rotate(&mut self) -> io::Result<()> {
        // Files past `keep`, left by a run that kept more: older than any kept, and out
        // of the order `events` reads them in.
        remove_beyond(&self.path, self.keep);
        if self.keep == 0 {
            fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            fs::remove_file(rotated(&self.path, self.keep)).or_else(ignore_missing)?;
            for n in (1..self.keep).rev() {
                fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1))
                    .or_else(ignore_missing)?;
            }
            fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.reopen()
    }

    /// Open `path` again (after logrotate moved it away, on SIGHUP).
    pub fn reopen(&mut self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let id = |m: &fs::Metadata| (m.dev(), m.ino());
        let was = self.file.metadata().ok();
        self.file = Self::open_append(&self.path)?;
        let now = self.file.metadata()?;
        // The same file, no shorter (neither moved away nor truncated by logrotate): our
        // count of its whole lines stands (its length may hold part of a line a full
        // disk cut short).
        if was.as_ref().map(id) != Some(id(&now)) || now.len() < self.size {
            self.size = now.len();
        }
        Ok(())
    }

    /// Whether the file at `path` is no longer the one we write (moved away or empty
    /// after an external rotation): then it needs a snapshot at its top.
    pub fn is_fresh(&self) -> bool {
        self.size == 0
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Read every event of the current file (lines that are no event are skipped: a torn
/// last line while the supervisor writes it; events of a newer version are
/// [`EventRecord::Unknown`]).
pub fn read_events(path: &Path) -> io::Result<Vec<EventLine>> {
    let file = File::open(path)?;
    Ok(BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| EventLine::parse(&l))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_files_past_keep_go_at_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        // A run that kept 6 left these; this one keeps 3.
        for n in 1..=6 {
            fs::write(rotated(&path, n), format!("{n}\n")).unwrap();
        }
        fs::write(dir.path().join("events.jsonl.2.gz"), "").unwrap();
        fs::write(&path, "{}\n").unwrap();
        let _ev = EventsFile::open(&path, 1 << 20, 3).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "events.jsonl",
                "events.jsonl.1",
                "events.jsonl.2",
                "events.jsonl.2.gz",
                "events.jsonl.3"
            ]
        );
        // The newest moved down by one; what was past 3 is gone.
        assert_eq!(fs::read_to_string(rotated(&path, 1)).unwrap(), "{}\n");
        assert_eq!(fs::read_to_string(rotated(&path, 2)).unwrap(), "1\n");
    }
}
