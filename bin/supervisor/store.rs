//! Opening the configured job store, for every verb and child role alike.

use anyhow::{Context, Result};
use supervisor_config::StoreConfig;
use supervisor_store::{JobStore, PostgresStore, SqliteStore};

use crate::wire::StoreArg;

/// A job store of either kind.
pub type Store = Box<dyn JobStore + Send>;

/// Open the store the config names, creating an SQLite file's folder if needed.
pub fn open(cfg: &StoreConfig) -> Result<Store> {
    open_arg(&arg(cfg)).with_context(|| format!("cannot open the job store {}", cfg.describe()))
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
    open_kind(arg, true)
}

/// Open the store for the supervisor's loop or the grabber, whose every millisecond
/// counts: an SQLite store leaves its checkpoints (which fsync) to the supervisor's
/// checkpointer thread.
pub fn open_hot(arg: &StoreArg) -> Result<Store> {
    open_kind(arg, false)
}

fn open_kind(arg: &StoreArg, autocheckpoint: bool) -> Result<Store> {
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
        StoreArg::Postgres(url) => Ok(Box::new(PostgresStore::connect(url)?)),
    }
}
