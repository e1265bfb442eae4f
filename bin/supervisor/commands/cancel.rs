//! `supervisor cancel ID`: a queued job is canceled at once; a running one is marked, and
//! the supervisor (rung) stops it.

use std::io::Write;
use std::path::Path;

use supervisor_store::CancelResult;

use super::{config, open_store, parse_id, ring, CommandError};
use crate::events_file::wall_now;

/// `supervisor cancel ID`.
pub fn cancel(path: &Path, id: &str) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let id = parse_id(id)?;
    let mut store = open_store(&config.store)?;
    match store.cancel(id, wall_now())? {
        CancelResult::Canceled => say!("job {id} canceled")?,
        CancelResult::Requested => {
            ring(&config);
            say!("job {id} is running: it is being stopped and will be canceled")?;
        }
        CancelResult::AlreadyFinished(state) => {
            say!("job {id} already finished: {}", state.as_str())?
        }
        CancelResult::Unknown => return Err(CommandError::UnknownJob(id)),
    }
    Ok(())
}
