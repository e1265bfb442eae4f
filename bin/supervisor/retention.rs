//! Retention: a thread of the supervisor, with a store connection of its own, that
//! deletes finished jobs past the config's `retention` limits, and their logs, a small
//! batch at a time. It never runs on the loop's thread nor holds the store for long, so
//! dispatch does not wait on it: a batch is one short transaction, and a full batch is
//! followed by a short pause before the next.

use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use supervisor_config::RetentionConfig;

use crate::events_file::wall_now;
use crate::wire::StoreArg;

/// Jobs deleted by one transaction.
const BATCH: u32 = 500;

/// Between two passes when the last one found nothing more to delete.
const QUIET: Duration = Duration::from_secs(5);

/// Between two batches while there is more to delete (lets claims and outcomes in).
const BUSY: Duration = Duration::from_millis(20);

/// The retention thread: told of each config generation's `retention`.
#[derive(Debug)]
pub struct Retention {
    tx: Sender<Option<RetentionConfig>>,
}

impl Retention {
    /// Start the thread (it does nothing while `config` is `None`).
    pub fn start(
        store: StoreArg,
        logs: PathBuf,
        config: Option<RetentionConfig>,
    ) -> std::io::Result<Retention> {
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("retention".into())
            .spawn(move || run(&rx, &store, &logs, config))?;
        Ok(Retention { tx })
    }

    /// A reload: the new limits (or none).
    pub fn update(&self, config: Option<RetentionConfig>) {
        let _ = self.tx.send(config);
    }
}

fn run(
    rx: &Receiver<Option<RetentionConfig>>,
    store_arg: &StoreArg,
    logs: &std::path::Path,
    mut config: Option<RetentionConfig>,
) {
    let mut store = None;
    let mut wait = Duration::ZERO;
    loop {
        let msg = if config.is_some() {
            rx.recv_timeout(wait)
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match msg {
            Ok(new) => {
                config = new;
                wait = Duration::ZERO;
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(limits) = &config else { continue };
        if store.is_none() {
            match crate::store::open_arg(store_arg) {
                Ok(s) => store = Some(s),
                Err(e) => {
                    log::warn!("retention: cannot open the store: {e:#}");
                    wait = QUIET;
                    continue;
                }
            }
        }
        let Some(s) = store.as_mut() else { continue };
        let before = limits.max_age.map(|age| wall_now() - age.as_secs_f64());
        match s.purge_finished(before, limits.max_count, BATCH) {
            Ok(ids) => {
                for id in &ids {
                    if let Err(e) = crate::joblog::remove(logs, *id) {
                        log::warn!("retention: cannot delete the log of job {id}: {e}");
                    }
                }
                if !ids.is_empty() {
                    log::debug!("retention: deleted {} finished job(s)", ids.len());
                }
                wait = if ids.len() == BATCH as usize {
                    BUSY
                } else {
                    QUIET
                };
            }
            Err(e) => {
                log::warn!("retention: {e}");
                store = None; // open it again: the connection may be what broke
                wait = QUIET;
            }
        }
    }
}
