//! The two long answers: `/api/events` (Server-Sent Events: the events file after a
//! `seq`, then each line as it is written) and `/api/jobs/ID/log?follow=1`. Each is a
//! task that feeds a small channel; the response body reads it, so a slow client slows
//! only its own task, and a client gone ends it at its next write.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;

use super::api::App;
use super::feed::Live;
use crate::commands::{JobLog, LogStep, FOLLOW_EVERY};
use crate::events_file::read_line_lossy;
use crate::record::EventLine;

/// How long an idle event stream waits before a comment line that keeps proxies from
/// closing it (and tells us when its client is gone).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The least time between two writes to one event stream: the events of that time go
/// in one write, whatever their rate.
const COALESCE: Duration = Duration::from_millis(100);

/// How often a followed log's job is looked at in the store.
const LOOK_AT_STORE_EVERY: Duration = Duration::from_secs(1);

/// The most bytes of one write to a stream.
const CHUNK: usize = 256 * 1024;

/// A body read from `rx`.
fn body_of(rx: mpsc::Receiver<Bytes>) -> Body {
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
    }))
}

/// How long a write to a stream may wait for its client to read: a client that stops
/// reading is cut off, and nothing of ours waits for it longer.
const SEND_WITHIN: Duration = Duration::from_secs(30);

/// Send `bytes` to a body's channel; false when the client is gone or stopped reading.
async fn send(tx: &mpsc::Sender<Bytes>, bytes: Bytes) -> bool {
    matches!(
        tokio::time::timeout(SEND_WITHIN, tx.send(bytes)).await,
        Ok(Ok(()))
    )
}

/// The event stream after `after` (`None`: only events from now on), holding `permit`
/// while it lasts.
pub fn events(
    app: &Arc<App>,
    events_path: PathBuf,
    after: Option<u64>,
    permit: impl Send + 'static,
) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    // Subscribed before the file is read: nothing falls between the two.
    let live = app.feed.subscribe();
    tokio::spawn(async move {
        let _permit = permit;
        if !send(&tx, Bytes::from_static(b"retry: 1000\n\n")).await {
            return;
        }
        let mut last = after.unwrap_or(0);
        if let Some(after) = after {
            // The file a chunk at a time, each read on a blocking thread, each sent from
            // here: no thread waits for the client.
            let opened = tokio::task::spawn_blocking(move || Backlog::open(&events_path, after));
            let mut backlog = opened.await.ok().flatten();
            while let Some(mut b) = backlog.take() {
                let Ok((b, chunk)) = tokio::task::spawn_blocking(move || {
                    let chunk = b.next_chunk();
                    (b, chunk)
                })
                .await
                else {
                    return;
                };
                last = last.max(b.last);
                match chunk {
                    Some(chunk) => {
                        if !send(&tx, Bytes::from(chunk)).await {
                            return;
                        }
                        backlog = Some(b);
                    }
                    None => break,
                }
            }
        }
        forward(live, tx, last).await;
    });
    body_of(rx)
}

/// Send each live line after `last` to `tx`, those of [`COALESCE`] in one write; ends
/// when the client is gone, or it fell so far behind that lines were dropped (the
/// client reconnects with `Last-Event-ID` and reads them from the file).
async fn forward(
    mut live: tokio::sync::broadcast::Receiver<Live>,
    tx: mpsc::Sender<Bytes>,
    mut last: u64,
) {
    loop {
        let first = match tokio::time::timeout(KEEPALIVE, live.recv()).await {
            Err(_) => {
                if !send(&tx, Bytes::from_static(b": keepalive\n\n")).await {
                    return;
                }
                continue;
            }
            Ok(Ok(line)) => line,
            Ok(Err(RecvError::Lagged(_) | RecvError::Closed)) => return,
        };
        let mut buf = String::new();
        push(&mut buf, &first, &mut last);
        while buf.len() < CHUNK {
            match live.try_recv() {
                Ok(line) => push(&mut buf, &line, &mut last),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => return,
            }
        }
        if !buf.is_empty() && !send(&tx, Bytes::from(buf)).await {
            return;
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// `line` as an SSE message, if it comes after `last`.
fn push(buf: &mut String, line: &Live, last: &mut u64) {
    if line.seq <= *last {
        return;
    }
    buf.push_str(&line.message);
    *last = line.seq;
}

fn message(buf: &mut String, seq: u64, line: &str) {
    buf.push_str(&super::feed::sse_message(seq, line));
}

/// The lines of the events file after a `seq`, read a chunk at a time: from the rotated
/// files (`.N`, ..., `.1`) when the current one begins later, then the current one.
struct Backlog {
    /// The files still to read, oldest first, the current one last.
    files: std::collections::VecDeque<PathBuf>,
    reader: Option<BufReader<File>>,
    after: u64,
    /// The `seq` of the last line read (`after` until one is).
    last: u64,
}

/// The most rotated files looked at.
const MAX_ROTATED: u32 = 1000;

/// The `seq` of a file's first line.
fn first_seq(path: &Path) -> Option<u64> {
    let mut line = String::new();
    read_line_lossy(&mut BufReader::new(File::open(path).ok()?), &mut line).ok()?;
    EventLine::seq_of(line.trim_end())
}

impl Backlog {
    fn open(path: &Path, after: u64) -> Option<Backlog> {
        let mut files = std::collections::VecDeque::from([path.to_path_buf()]);
        let wanted = after.saturating_add(1);
        let mut n = 1;
        while n <= MAX_ROTATED
            && files
                .front()
                .and_then(|f| first_seq(f))
                .is_some_and(|s| s > wanted)
        {
            let older = crate::events_file::rotated(path, n);
            if !older.exists() {
                break;
            }
            files.push_front(older);
            n += 1;
        }
        let mut b = Backlog {
            files,
            reader: None,
            after,
            last: after,
        };
        if b.files.len() == 1 {
            // Only the current file: start near its end when its last MiB holds it all.
            b.reader = Some(Self::near(path, after)?);
            b.files.clear();
        }
        Some(b)
    }

    /// `path` from where its lines after `after` begin.
    fn near(path: &Path, after: u64) -> Option<BufReader<File>> {
        const TAIL: u64 = 1 << 20;
        let mut file = File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        let mut start = 0;
        if len > TAIL {
            let from = len - TAIL;
            file.seek(SeekFrom::Start(from)).ok()?;
            let mut reader = BufReader::new(&mut file);
            let mut torn = String::new();
            let skipped = read_line_lossy(&mut reader, &mut torn).ok()? as u64;
            let mut first = String::new();
            read_line_lossy(&mut reader, &mut first).ok()?;
            if EventLine::seq_of(first.trim_end()).is_some_and(|s| s <= after.saturating_add(1)) {
                start = from + skipped;
            }
        }
        file.seek(SeekFrom::Start(start)).ok()?;
        Some(BufReader::new(file))
    }

    /// The next messages, about [`CHUNK`] bytes of them; `None` at the end (or at a
    /// line still being written, which the live stream brings).
    fn next_chunk(&mut self) -> Option<String> {
        let mut buf = String::new();
        let mut line = String::new();
        while buf.len() < CHUNK {
            let Some(reader) = self.reader.as_mut() else {
                let next = self.files.pop_front()?;
                // A file rotated away meanwhile is skipped; the live stream has what follows.
                self.reader = File::open(next).ok().map(BufReader::new);
                continue;
            };
            line.clear();
            match read_line_lossy(reader, &mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => {}
                _ => {
                    self.reader = None;
                    if self.files.is_empty() {
                        break;
                    }
                    continue;
                }
            }
            let text = line.trim_end();
            let Some(seq) = EventLine::seq_of(text) else {
                continue;
            };
            if seq <= self.after.max(self.last) {
                continue;
            }
            message(&mut buf, seq, text);
            self.last = seq;
        }
        (!buf.is_empty()).then_some(buf)
    }
}

/// A job's log, followed until the job is final when `log` follows: each chunk read
/// (and each look at the store) on a blocking thread, each sent from here, so that no
/// thread waits for the client.
pub fn log(app: &Arc<App>, log: JobLog, permit: impl Send + 'static) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let app = app.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut log = log;
        let mut looked_at = std::time::Instant::now();
        loop {
            let step = tokio::task::spawn_blocking(move || {
                let mut chunk = Vec::new();
                let step = log.step(&mut chunk, CHUNK as u64);
                (log, chunk, step)
            });
            let Ok((l, chunk, step)) = step.await else {
                return;
            };
            log = l;
            if !chunk.is_empty() && !send(&tx, Bytes::from(chunk)).await {
                return;
            }
            match step {
                Ok(LogStep::More) => continue,
                Ok(LogStep::Wait) => {}
                Ok(LogStep::Done) => return,
                Err(e) => {
                    log::debug!("http: a log stream ended: {e}");
                    return;
                }
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
            if tx.is_closed() {
                return;
            }
            // The log is looked at every FOLLOW_EVERY, the store (is the job final?)
            // once a second: many followers must not keep the store busy.
            if looked_at.elapsed() < LOOK_AT_STORE_EVERY {
                continue;
            }
            looked_at = std::time::Instant::now();
            let app2 = app.clone();
            let looked = tokio::task::spawn_blocking(move || {
                let r = app2.with_store(|_, store| log.refresh(store));
                (log, r)
            });
            match looked.await {
                Ok((l, Ok(()))) => log = l,
                _ => return,
            }
        }
    });
    body_of(rx)
}
