//! The job logs of one worker, with its spare: an empty log file kept open for reuse
//! (a rename costs far less than a new inode), and the log's owner (the job's user
//! while it runs).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use supervisor_config::RunAs;

/// The job logs of one worker, with its spare: an empty log file kept open for reuse.
pub(super) struct Logs {
    dir: PathBuf,
    spare_path: PathBuf,
    spare: Option<File>,
}

impl Logs {
    pub(super) fn new(dir: PathBuf, group: &str, slot: u32) -> Logs {
        let spare_path = dir.join(format!(".spare-{group}-{slot}"));
        // A predecessor in this slot may have left its spare: reuse it if still empty.
        let spare = OpenOptions::new()
            .append(true)
            .open(&spare_path)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.len() == 0));
        Logs {
            dir,
            spare_path,
            spare,
        }
    }

    /// The log of `job`, opened for appending: the earlier attempts' log if there is
    /// one, else the spare renamed to it, else a new file.
    pub(super) fn open(&mut self, job: i64, attempt: u32) -> std::io::Result<(File, PathBuf)> {
        let path = crate::joblog::log_path(&self.dir, job);
        if let Some(spare) = self.spare.take() {
            match supervisor_os::rename_noreplace(&self.spare_path, &path) {
                Ok(true) => {
                    // A retry whose earlier attempts wrote nothing begins at 0.
                    crate::joblog::note_attempt_start(&self.dir, job, attempt, 0)?;
                    return Ok((spare, path));
                }
                // A retry: append to the log of the earlier attempts.
                Ok(false) => self.spare = Some(spare),
                Err(e) => log::warn!("worker: cannot reuse the spare log: {e}"),
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        // A retry appends to the earlier attempts' output: say where this one begins.
        let offset = file.metadata()?.len();
        crate::joblog::note_attempt_start(&self.dir, job, attempt, offset)?;
        Ok((file, path))
    }

    /// The job is over: a log it left empty becomes the spare (ours again, if it was
    /// given to the job's user).
    pub(super) fn done(&mut self, log: File, path: &Path, given: bool) {
        if self.spare.is_some() || !log.metadata().is_ok_and(|m| m.len() == 0) {
            return;
        }
        if given && take_back(&log).is_err() {
            return;
        }
        if std::fs::rename(path, &self.spare_path).is_ok() {
            self.spare = Some(log);
        }
    }
}

/// Make `file` belong to `uid`/`gid`.
fn give(file: &File, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::fchown(file, Some(uid), Some(gid))
}

/// Give job `job`'s log to the user it runs as, if any: the job's user may write its
/// log through fds 1 and 2 in any case; owning it, it may also reopen it
/// (`/dev/stderr`). Whether it was given.
pub(super) fn give_to_user(log: &File, job: i64, run_as: Option<&RunAs>) -> bool {
    match run_as {
        Some(u) => match give(log, u.uid, u.gid) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("worker: cannot give job {job}'s log to {}: {e}", u.user);
                false
            }
        },
        None => false,
    }
}

/// Make a log given to a job's user ours again.
pub(super) fn take_back(log: &File) -> std::io::Result<()> {
    give(
        log,
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}
