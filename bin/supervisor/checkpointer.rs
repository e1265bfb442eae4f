//! Checkpoints of the SQLite write-ahead log, off the hot path.
//!
//! SQLite checkpoints on whichever commit takes the log past 1000 pages, and a
//! checkpoint ends in `fsync`: milliseconds during which that connection's owner (the
//! supervisor's loop, or the grabber) does nothing else while workers sit idle. So the
//! supervisor and the grabber turn automatic checkpoints off, and this thread, with a
//! connection of its own, checkpoints (`PASSIVE`: writers go on meanwhile) after every
//! [`Checkpointer::EVERY`] outcomes. A job costs about five pages of log (a claim and
//! an outcome), so the log stays near SQLite's default size. Idle, it never wakes.

use std::path::Path;

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use supervisor_store::SqliteStore;

pub struct Checkpointer {
    tx: Sender<()>,
    since: u32,
}

impl Checkpointer {
    /// Outcomes between two checkpoints.
    pub const EVERY: u32 = 200;

    pub fn start(path: &Path) -> Result<Checkpointer> {
        let store = SqliteStore::open(path)
            .with_context(|| format!("cannot open the job store {}", path.display()))?;
        // One pending request is enough: requests made during a checkpoint coalesce.
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || {
                for () in rx {
                    if let Err(e) = store.checkpoint() {
                        log::warn!("{e}");
                    }
                }
            })
            .context("cannot start the checkpointer thread")?;
        Ok(Checkpointer { tx, since: 0 })
    }

    /// One more outcome was written.
    pub fn wrote(&mut self) {
        self.since += 1;
        if self.since >= Self::EVERY {
            self.since = 0;
            let _ = self.tx.try_send(());
        }
    }
}
