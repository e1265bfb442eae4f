//! Checkpoints of the SQLite write-ahead log, off the hot path.
//!
//! SQLite checkpoints on whichever commit takes the log past 1000 pages, and a
//! checkpoint ends in `fsync`: milliseconds during which that connection's owner (the
//! supervisor's loop, or the grabber) does nothing else while workers sit idle. So the
//! supervisor and the grabber turn automatic checkpoints off, and this thread, with a
//! connection of its own, checkpoints (`PASSIVE`: writers go on meanwhile) after every
//! [`Checkpointer::EVERY`] outcomes. A job costs about five pages of log (a claim and
//! an outcome), so the log stays near SQLite's default size. Under a steady load the
//! passive checkpoints rarely catch up with the log's end, so the log never starts over
//! and grows by every page written (90 MB for 10,000 jobs): past 16 MiB it is copied and
//! emptied (`TRUNCATE`), which makes writers wait a moment. Idle, it never wakes.

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

    /// A log this long (in pages, 16 MiB) is emptied rather than only copied.
    pub const TRUNCATE_PAGES: i64 = 4096;

    pub fn start(path: &Path) -> Result<Checkpointer> {
        let store = SqliteStore::open(path)
            .with_context(|| format!("cannot open the job store {}", path.display()))?;
        // One pending request is enough: requests made during a checkpoint coalesce.
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || {
                for () in rx {
                    match store.checkpoint() {
                        // The log did not start over (readers and writers kept it busy)
                        // and has grown: empty it, at the cost of a short wait for both.
                        Ok((log, _)) if log >= Self::TRUNCATE_PAGES => {
                            if let Err(e) = store.checkpoint_truncate() {
                                log::warn!("{e}");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => log::warn!("{e}"),
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
