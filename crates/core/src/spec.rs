//! What the core is asked to supervise: the parts of the config that policy needs.
//!
//! The config crate parses and validates the file and converts it into a [`Spec`]; the
//! core never sees JSON, paths or store settings.

use std::time::Duration;

use crate::backoff::Backoff;

/// Everything the supervision policy needs to know, for one config generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// The groups in config order (the order the grabber routes in).
    pub groups: Vec<GroupSpec>,
    /// Restart policy of the grabber (the contract gives it none of its own; the
    /// config crate uses the default restart policy with `on_exhausted: exit`).
    pub grabber_restart: RestartPolicy,
    /// Liveness pings.
    pub heartbeat: Heartbeat,
    /// How long a graceful stop lets running jobs finish before stopping them.
    pub shutdown_grace: Duration,
    /// Between SIGTERM and SIGKILL when stopping a job's process group or a child.
    pub kill_grace: Duration,
    /// How long a child may take from spawn to its Ready message.
    pub start_timeout: Duration,
    /// `run --until-empty`: finish once the source is empty and nothing runs.
    pub until_empty: bool,
}

impl Spec {
    /// The group called `name`, if this generation has one.
    pub fn group(&self, name: &str) -> Option<&GroupSpec> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// One group: a pool of workers and the rules for its jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    /// Unique name; jobs name it or are routed to it.
    pub name: String,
    /// The pool's size; 0 keeps the group (its jobs wait) with no workers.
    pub max_workers: u32,
    /// Default deadline of one attempt (a job's own `timeout_s` wins).
    pub job_timeout: Option<Duration>,
    /// Default attempts before a job is `dead` (a job's own `max_attempts` wins).
    pub max_attempts: u32,
    /// Delay before a failed, timed out or lost attempt is queued again.
    pub retry_backoff: Backoff,
    /// How crashed workers are restarted, and when to give up.
    pub restart: RestartPolicy,
}

/// Restart with backoff; give up after too many restarts in a sliding window.
#[derive(Clone, Debug, PartialEq)]
pub struct RestartPolicy {
    /// Delay before each restart.
    pub backoff: Backoff,
    /// More restarts than this within `period` means giving up.
    pub max_restarts: u32,
    /// The sliding window of the intensity limit.
    pub period: Duration,
    /// What giving up means.
    pub on_exhausted: OnExhausted,
}

impl RestartPolicy {
    /// How long a child must stay up before its backoff starts again from `initial`:
    /// longer than the longest backoff, and at least one second.
    pub fn stable_after(&self) -> Duration {
        self.backoff.max.max(Duration::from_secs(1))
    }
}

/// What happens when a group's restart limit is exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExhausted {
    /// Stop the whole supervisor, exit code 3.
    Exit,
    /// Stop that group only; the others go on.
    Disable,
}

impl OnExhausted {
    /// The word used in the config and the events file.
    pub fn as_str(self) -> &'static str {
        match self {
            OnExhausted::Exit => "exit",
            OnExhausted::Disable => "disable",
        }
    }
}

/// Liveness pings to every child.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heartbeat {
    /// How often each child is pinged.
    pub interval: Duration,
    /// A child silent for this long is killed and handled as a crash.
    pub timeout: Duration,
}

/// Defaults of the contract, for tests and for the config crate.
pub mod defaults {
    use super::*;

    /// `restart` of a group when the config names none.
    pub fn restart() -> RestartPolicy {
        RestartPolicy {
            backoff: Backoff::from_secs(0.1, 30.0, 0.75),
            max_restarts: 5,
            period: Duration::from_secs(60),
            on_exhausted: OnExhausted::Exit,
        }
    }

    /// `retry_backoff` of a group when the config names none.
    pub fn retry_backoff() -> Backoff {
        Backoff::from_secs(1.0, 300.0, 0.75)
    }

    /// `heartbeat` when the config names none.
    pub fn heartbeat() -> Heartbeat {
        Heartbeat {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
        }
    }

    /// A group with the contract's defaults.
    pub fn group(name: &str, max_workers: u32) -> GroupSpec {
        GroupSpec {
            name: name.to_string(),
            max_workers,
            job_timeout: Some(Duration::from_secs(3600)),
            max_attempts: 3,
            retry_backoff: retry_backoff(),
            restart: restart(),
        }
    }

    /// A spec with the contract's defaults around the given groups.
    pub fn spec(groups: Vec<GroupSpec>) -> Spec {
        Spec {
            groups,
            grabber_restart: restart(),
            heartbeat: heartbeat(),
            shutdown_grace: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
            until_empty: false,
        }
    }
}
