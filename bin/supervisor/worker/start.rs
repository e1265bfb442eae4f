//! The start of one attempt: its log, its environment, its cgroup, and the job's
//! process spawned as its group's config says (user, limits, nice, umask).

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use supervisor_os::cgroup::JobCgroup;
use supervisor_os::{JobCommand, JobSetup, Sig};

use super::threads::JOB_PGID;
use super::{logs, Running, Worker};
use crate::wire::{FromChild, JobPayload};

/// What every job's environment starts from: the worker's own, minus our names.
pub(super) fn base_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            k != "SUPERVISOR_JOB_ID"
                && k != "SUPERVISOR_ATTEMPT"
                && k != "SUPERVISOR_JOB_UMASK"
                && k != crate::ipc::CHILD_VAR
        })
        .collect()
}

/// The umask jobs start with: the one `supervisor run` was started with, which it passes
/// down in `SUPERVISOR_JOB_UMASK` (octal).
fn job_umask() -> Option<u32> {
    let text = std::env::var("SUPERVISOR_JOB_UMASK").ok()?;
    u32::from_str_radix(&text, 8).ok().filter(|m| *m <= 0o777)
}

impl Worker {
    /// Start one attempt. On failure to start, the reason goes to the job's log and
    /// the attempt ends at once (`end: None`); the worker lives on.
    pub(super) fn start(&mut self, job: &JobPayload) -> Option<Running> {
        if let Err(why) = self.start_threads() {
            return self.start_failed(job, None, format!("its worker {why}"));
        }
        let (mut log, log_path) = match self.logs.open(job.id, job.attempt) {
            Ok(x) => x,
            Err(e) => return self.start_failed(job, None, format!("cannot open its log: {e}")),
        };
        let process = &job.process;
        let run_as = process.run_as.as_ref();
        let log_given = logs::give_to_user(&log, job.id, run_as);
        let env = self.job_env(job);
        let cgroup = match self.cgroups.for_attempt(job.id, job.attempt, process) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                if log_given {
                    let _ = logs::take_back(&log);
                }
                let why = format!("cannot make its cgroup: {e}");
                return self.start_failed(job, Some(&mut log), why);
            }
        };
        let limits = process.limits();
        let credentials = run_as.map(supervisor_config::RunAs::credentials);
        let setup = JobSetup {
            cgroup_procs: cgroup.as_ref().map(JobCgroup::procs),
            limits: &limits,
            nice: process.nice,
            credentials: credentials.as_ref(),
        };
        let cmd = JobCommand {
            argv: &job.command,
            env,
            cwd: job.cwd.as_deref().map(Path::new),
            stdin: self.devnull.as_fd(),
            output: log.as_fd(),
            program: None,
            death_signal: Sig::SIGKILL,
            // The supervisor keeps its state private (umask 077); a job gets the umask
            // the supervisor was started with.
            umask: job_umask(),
        };
        let since = Instant::now();
        match self.spawner.spawn_with(&cmd, &setup) {
            Ok(pid) => {
                JOB_PGID.store(pid, Ordering::SeqCst);
                let _ = self.tx.send(FromChild::JobStarted { job: job.id, pid });
                Some(Running {
                    job: job.id,
                    pgid: pid,
                    since,
                    signaled: false,
                    log,
                    log_path,
                    log_given,
                    cgroup: cgroup.map(|c| (c, process.memory_max_bytes)),
                })
            }
            Err(e) => {
                if let Some(c) = cgroup {
                    self.cgroups.spend(c);
                    self.cgroups.remove_spent();
                }
                self.start_failed(job, Some(&mut log), e.to_string())
            }
        }
    }

    /// The environment of `job`'s process, over the worker's own (see [`base_env`]).
    fn job_env(&self, job: &JobPayload) -> Vec<(OsString, OsString)> {
        let mut env = self.env.clone();
        let ours = [
            ("SUPERVISOR_JOB_ID".to_string(), job.id.to_string()),
            ("SUPERVISOR_ATTEMPT".to_string(), job.attempt.to_string()),
        ];
        // The user's own (a job's `--env` still wins), then the job's, then ours.
        let user_env: Vec<(String, String)> = job
            .process
            .run_as
            .as_ref()
            .map(|u| {
                [("HOME", &u.home), ("USER", &u.user), ("LOGNAME", &u.user)]
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .to_vec()
            })
            .unwrap_or_default();
        for (k, v) in user_env
            .iter()
            .map(|(k, v)| (k, v))
            .chain(job.env.iter())
            .chain(ours.iter().map(|(k, v)| (k, v)))
        {
            match env.iter_mut().find(|(ek, _)| ek == k.as_str()) {
                Some(slot) => slot.1 = v.into(),
                None => env.push((k.into(), v.into())),
            }
        }
        env
    }

    /// The attempt of `job` could not start, for `why`: say so in its log (else in
    /// ours), and end the attempt at once.
    fn start_failed(
        &self,
        job: &JobPayload,
        log: Option<&mut File>,
        why: String,
    ) -> Option<Running> {
        let what = job.command.join(" ");
        match log {
            Some(log) => {
                let _ = writeln!(log, "supervisor: cannot start `{what}`: {why}");
            }
            None => log::error!("worker: job {}: cannot start `{what}`: {why}", job.id),
        }
        let _ = self.tx.send(FromChild::JobEnded {
            job: job.id,
            end: None,
            ran_for_s: None,
            start_error: Some(format!("cannot start `{what}`: {why}")),
            reason: None,
            exited_first: false,
        });
        None
    }
}
