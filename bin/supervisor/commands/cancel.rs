//! `supervisor cancel ID`: a queued job is canceled at once; a running one is marked, and
//! the supervisor (rung) stops it.

use std::io::Write;
use std::path::Path;

use supervisor_config::Config;
use supervisor_store::CancelResult;

use crate::store::Store;

use super::{config, open_store, parse_id, ring, CommandError};
use crate::events_file::wall_now;

/// `supervisor cancel ID`.
pub fn cancel(path: &Path, id: &str) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let id = parse_id(id)?;
    let mut store = open_store(&config.store)?;
    match cancel_job(&config, &mut store, id)? {
        CancelResult::Canceled => say!("job {id} canceled")?,
        CancelResult::Requested => say!(
            "job {id} is running: it is being stopped, and will be canceled unless it ends first"
        )?,
        CancelResult::AlreadyFinished(state) => {
            say!("job {id} already finished: {}", state.as_str())?
        }
        CancelResult::Unknown => return Err(CommandError::UnknownJob(id)),
    }
    Ok(())
}

/// Cancel job `id` (`supervisor cancel` and the HTTP API): a running one is marked, and
/// the supervisor rung to stop it.
pub(crate) fn cancel_job(
    config: &Config,
    store: &mut Store,
    id: i64,
) -> Result<CancelResult, CommandError> {
    let result = store.cancel(id, wall_now())?;
    if result == CancelResult::Requested {
        ring(config);
    }
    Ok(result)
}
