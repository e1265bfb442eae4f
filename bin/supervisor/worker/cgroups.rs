//! The cgroups of one worker's jobs: a job whose group sets `memory_max_bytes` or
//! `cpu_max` runs in one of its own, where the supervisor has a delegated cgroup v2;
//! it is removed once the attempt's processes are gone, and an OOM kill in it is told.

use std::fs::File;
use std::io::Write;

use supervisor_config::JobProcess;
use supervisor_os::cgroup::{Delegated, JobCgroup};

/// Whether this worker can give jobs cgroups of their own: found out at the first job
/// that asks for one.
enum Cgroups {
    Unknown,
    Usable(Delegated),
    /// Why not; said once.
    Unusable,
}

/// The cgroups of one worker's jobs.
pub(super) struct JobCgroups {
    /// The worker's group, for messages.
    group: String,
    cgroups: Cgroups,
    /// Cgroups of attempts that ended, to remove once their processes are gone (and
    /// again later, if one still held a process then).
    spent: Vec<JobCgroup>,
}

impl JobCgroups {
    pub(super) fn new(group: &str) -> JobCgroups {
        JobCgroups {
            group: group.to_string(),
            cgroups: Cgroups::Unknown,
            spent: Vec::new(),
        }
    }

    /// The cgroup of one attempt of a job whose group sets `memory_max_bytes` or
    /// `cpu_max`, where this supervisor has a delegated cgroup; none otherwise (said
    /// once per worker when the limits cannot be enforced).
    pub(super) fn for_attempt(
        &mut self,
        job: i64,
        attempt: u32,
        process: &JobProcess,
    ) -> std::io::Result<Option<JobCgroup>> {
        let limits = process.cgroup_limits();
        if !limits.any() {
            return Ok(None);
        }
        if matches!(self.cgroups, Cgroups::Unknown) {
            self.cgroups = match supervisor_os::cgroup::detect().and_then(|d| {
                d.enable_controllers()
                    .map(|()| d)
                    .map_err(|e| e.to_string())
            }) {
                Ok(delegated) => Cgroups::Usable(delegated),
                Err(why) => {
                    log::warn!(
                        "worker {}: cgroups are not in use, memory_max_bytes and cpu_max \
                         are not enforced: {why}",
                        self.group
                    );
                    Cgroups::Unusable
                }
            };
        }
        match &self.cgroups {
            Cgroups::Usable(delegated) => delegated
                .create_job(&format!("job-{job}-{attempt}"), &limits)
                .map(Some),
            Cgroups::Unknown | Cgroups::Unusable => Ok(None),
        }
    }

    /// The attempt of `cgroup` has ended: remove it at the next [`Self::remove_spent`].
    pub(super) fn spend(&mut self, cgroup: JobCgroup) {
        self.spent.push(cgroup);
    }

    /// Remove the cgroups of ended attempts; one that still holds a process (it left
    /// the worker's reach) has it killed and is tried again next time.
    pub(super) fn remove_spent(&mut self) {
        for cgroup in std::mem::take(&mut self.spent) {
            if let Err((cgroup, e)) = cgroup.remove() {
                log::warn!("worker: cannot remove a job's cgroup yet: {e}");
                self.spent.push(cgroup);
            }
        }
    }
}

/// Say in the job's log that the OOM killer acted in its cgroup, and return it as the
/// attempt's reason (the job's `reason`, and `job_finished`'s).
pub(super) fn note_oom(
    log: &mut File,
    cgroup: &JobCgroup,
    memory_max: Option<u64>,
) -> Option<String> {
    let kills = cgroup.oom_kills();
    if kills == 0 {
        return None;
    }
    let limit = memory_max.map_or(String::new(), |b| format!(" (memory_max_bytes {b})"));
    let reason = format!(
        "killed for its memory limit{limit}: the OOM killer acted {kills} time(s) in its \
         cgroup {}",
        cgroup.dir().display()
    );
    let _ = writeln!(log, "supervisor: the job was {reason}");
    Some(reason)
}
