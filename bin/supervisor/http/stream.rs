//! The two long answers: `/api/events` (Server-Sent Events: the events file after a
//! `seq`, then each line as it is written) and `/api/jobs/ID/log?follow=1`. Each is a
//! task that feeds a small channel; the response body reads it, so a slow client slows
//! only its own task, and a client gone ends it at its next write.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::api::App;
use super::feed::Live;
use crate::commands::{JobLog, FOLLOW_EVERY};
use crate::record::EventLine;

/// How long an idle event stream waits before a comment line that keeps proxies from
/// closing it (and tells us when its client is gone).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The least time between two writes to one event stream: the events of that time go
/// in one write, whatever their rate.
const COALESCE: Duration = Duration::from_millis(100);

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

/// The event stream after `after` (`None`: only events from now on), holding `permit`
/// while it lasts.
pub fn events(
    app: &Arc<App>,
    events_path: PathBuf,
    after: Option<u64>,
    permit: OwnedSemaphorePermit,
) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    // Subscribed before the file is read: nothing falls between the two.
    let live = app.feed.subscribe();
    tokio::spawn(async move {
        let _permit = permit;
        if tx
            .send(Bytes::from_static(b"retry: 1000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut last = after.unwrap_or(0);
        if let Some(after) = after {
            let tx2 = tx.clone();
            let read = tokio::task::spawn_blocking(move || backlog(&events_path, after, &tx2));
            match read.await {
                Ok(Some(seq)) => last = seq,
                Ok(None) => {}
                Err(_) => return,
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
                if tx
                    .send(Bytes::from_static(b": keepalive\n\n"))
                    .await
                    .is_err()
                {
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
        if !buf.is_empty() && tx.send(Bytes::from(buf)).await.is_err() {
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
    message(buf, line.seq, &line.line);
    *last = line.seq;
}

fn message(buf: &mut String, seq: u64, line: &str) {
    use std::fmt::Write as _;
    // A line of the events file is one JSON object: no newline inside.
    let _ = write!(buf, "id: {seq}\ndata: {line}\n\n");
}

/// Send the lines of the events file after `after` to `tx`; the `seq` of the last one
/// sent, if any. Starts near the end when the file's tail holds them all.
fn backlog(path: &Path, after: u64, tx: &mpsc::Sender<Bytes>) -> Option<u64> {
    const TAIL: u64 = 1 << 20;
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut start = 0;
    if len > TAIL {
        let from = len - TAIL;
        file.seek(SeekFrom::Start(from)).ok()?;
        let mut reader = BufReader::new(&mut file);
        let mut torn = String::new();
        let skipped = reader.read_line(&mut torn).ok()? as u64;
        let mut first = String::new();
        reader.read_line(&mut first).ok()?;
        if EventLine::seq_of(first.trim_end()).is_some_and(|s| s <= after.saturating_add(1)) {
            start = from + skipped;
        }
    }
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut last = None;
    let mut buf = String::new();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        let Some(seq) = EventLine::seq_of(&line) else {
            continue;
        };
        if seq <= after {
            continue;
        }
        message(&mut buf, seq, &line);
        last = Some(seq);
        if buf.len() >= CHUNK
            && tx
                .blocking_send(Bytes::from(std::mem::take(&mut buf)))
                .is_err()
        {
            return None;
        }
    }
    if !buf.is_empty() && tx.blocking_send(Bytes::from(buf)).is_err() {
        return None;
    }
    last
}

/// A `Write` into a body channel (from a blocking thread).
struct ToBody<'a>(&'a mpsc::Sender<Bytes>);

impl Write for ToBody<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A job's log, followed until the job is final when `log` follows: each step (and the
/// look at the store) on a blocking thread, the waits between them not.
pub fn log(app: &Arc<App>, log: JobLog, permit: Option<OwnedSemaphorePermit>) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let app = app.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut log = Some(log);
        loop {
            let (Some(mut l), tx2, app2) = (log.take(), tx.clone(), app.clone()) else {
                return;
            };
            let step = tokio::task::spawn_blocking(move || {
                let more = l.step(&mut ToBody(&tx2))?;
                if more {
                    app2.with_store(|_, store| l.refresh(store))?;
                }
                Ok::<_, crate::commands::CommandError>((more, l))
            });
            match step.await {
                Ok(Ok((true, l))) => log = Some(l),
                Ok(Ok((false, _))) => return,
                Ok(Err(e)) => {
                    log::debug!("http: a log stream ended: {e}");
                    return;
                }
                Err(_) => return,
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    });
    body_of(rx)
}
