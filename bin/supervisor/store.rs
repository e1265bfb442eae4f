//! Opening the configured job store, for every verb and child role alike.

use anyhow::{Context, Result};
use supervisor_config::StoreConfig;
use supervisor_store::{JobStore, Patience, PostgresStore, SqliteStore};

use crate::wire::StoreArg;

/// A job store of either kind.
pub type Store = Box<dyn JobStore + Send>;

/// How long an operator's verb keeps trying to reach a store server that does not answer.
const VERB_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Open the store the config names, creating an SQLite file's folder if needed. A server
/// that cannot be reached (restarting, say) is tried again for a few seconds before the
/// verb fails, naming it.
pub fn open(cfg: &StoreConfig) -> Result<Store> {
    let deadline = std::time::Instant::now() + VERB_PATIENCE;
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match open_arg(&arg(cfg)) {
            Ok(store) => return Ok(store),
            Err(e)
                if std::time::Instant::now() + delay < deadline
                    && e.downcast_ref::<supervisor_store::StoreError>()
                        .is_some_and(|e| {
                            matches!(e, supervisor_store::StoreError::Connect { .. })
                        }) =>
            {
                log::warn!("the job store is unreachable ({e:#}); trying again");
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(1));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open the job store {}", cfg.describe()))
            }
        }
    }
}

/// What a child needs to open the same store.
pub fn arg(cfg: &StoreConfig) -> StoreArg {
    match cfg {
        StoreConfig::Sqlite { path } => StoreArg::Sqlite(path.clone()),
        StoreConfig::Postgres { url } => StoreArg::Postgres(url.clone()),
    }
}

/// Open a store from a child's argument.
pub fn open_arg(arg: &StoreArg) -> Result<Store> {
    open_kind(arg, true, Patience::Normal)
}

/// Open the store for the supervisor's loop or the grabber, whose every millisecond
/// counts: an SQLite store leaves its checkpoints (which fsync) to the supervisor's
/// checkpointer thread.
pub fn open_hot(arg: &StoreArg) -> Result<Store> {
    open_kind(arg, false, Patience::Normal)
}

/// Open the store for the supervisor's loop and its lease: as [`open_hot`], and a
/// server gone silent fails a call in 3 s, not 10 (see [`Patience::Short`]).
pub fn open_for_loop(arg: &StoreArg) -> Result<Store> {
    open_kind(arg, false, Patience::Short)
}

fn open_kind(arg: &StoreArg, autocheckpoint: bool, patience: Patience) -> Result<Store> {
    match arg {
        StoreArg::Sqlite(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let store = SqliteStore::open(path)?;
            if !autocheckpoint {
                store.disable_autocheckpoint()?;
            }
            Ok(Box::new(store))
        }
        StoreArg::Postgres(url) => Ok(Box::new(PostgresStore::connect_with(url, patience)?)),
    }
}
