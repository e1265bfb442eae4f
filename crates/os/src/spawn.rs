//! Starting a job's process cheaply and cleanly.
//!
//! std's `Command` with a `pre_exec` hook falls back from `posix_spawn` (a vfork) to a
//! full `fork`, which copies the worker's page tables only for `exec` to throw them
//! away: about 160 µs of CPU per job on these machines, a third of a `/bin/true`. Yet a
//! job needs what `posix_spawn` cannot give: `PR_SET_PDEATHSIG`, so that it dies with
//! its worker even when the whole supervisor is SIGKILLed.
//!
//! So [`Spawner`] does what glibc's `posix_spawn` does inside: `clone(CLONE_VM |
//! CLONE_VFORK)` onto a stack of its own. The child shares the parent's memory (no
//! copy) and the parent thread sleeps until the child has called `execve` or `_exit`.
//! The child runs [`child_main`], which makes raw, async-signal-safe calls only: it
//! allocates nothing, takes no lock, and reads nothing but the [`ChildPlan`] the parent
//! prepared. A failure is written to the plan's shared result slots before `_exit`, so
//! the parent can name the step that failed and its errno.
//!
//! A job may also be set up ([`JobSetup`]): moved into its cgroup, given resource limits
//! and a niceness, and switched to another user, in that order, all before `exec` and
//! all as raw system calls. The user switch in particular must not go through glibc's
//! `setuid`/`setgid`/`setgroups`: in a process glibc knows to be threaded they signal
//! every thread of it to switch too, and this child shares the worker's memory, so
//! glibc would take the worker's threads for its own and make the worker drop its
//! privileges. The raw calls change the calling (child) process alone.
//!
//! Here are the public types and the parent's side of the clone; `spawn/plan.rs` prepares
//! what the child reads and names a failure it reports, and `spawn/child.rs` is the
//! child, up to `execve`.

#![allow(unsafe_code)]

mod child;
mod plan;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::Ended;
use child::child_main;
use plan::{CStrings, ChildPlan, FdAbove2};

/// What to start: the argv (the program is `argv[0]`, looked up in the `PATH` of `env`
/// when it has no `/`), the whole environment, the working directory, and the file
/// that takes both stdout and stderr.
#[derive(Debug)]
pub struct JobCommand<'a> {
    pub argv: &'a [String],
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<&'a Path>,
    pub stdin: BorrowedFd<'a>,
    pub output: BorrowedFd<'a>,
    /// The file to execute, when it is not `argv[0]` (looked up in `PATH`): the
    /// supervisor starts its children as `/proc/self/exe` with an `argv[0]` of its own.
    pub program: Option<&'a Path>,
    /// Delivered to the child when the spawning thread exits (`PR_SET_PDEATHSIG`).
    pub death_signal: nix::sys::signal::Signal,
    /// The file mode creation mask the command starts with (`None`: the spawner's).
    pub umask: Option<u32>,
}

/// Who a job runs as. The spawner switches to it in the child: supplementary groups,
/// then the group id, then the user id (real, effective and saved alike, so that the job
/// can never switch back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name, for messages.
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// The supplementary groups, as `initgroups` would set them (see
    /// [`crate::users::group_list`]).
    pub groups: Vec<u32>,
}

/// A resource a job's limit is on (`setrlimit`), named by its config key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `RLIMIT_NOFILE`: file descriptors (`nofile`).
    OpenFiles,
    /// `RLIMIT_NPROC`: processes of the job's real user (`nproc`).
    Processes,
    /// `RLIMIT_CORE`: bytes of a core dump (`core`).
    CoreBytes,
    /// `RLIMIT_AS`: bytes of address space (`as_bytes`).
    AddressSpace,
    /// `RLIMIT_CPU`: seconds of CPU time (`cpu_s`).
    CpuSeconds,
}

impl Resource {
    /// The config key that names it (under `rlimits`).
    pub fn key(self) -> &'static str {
        match self {
            Resource::OpenFiles => "nofile",
            Resource::Processes => "nproc",
            Resource::CoreBytes => "core",
            Resource::AddressSpace => "as_bytes",
            Resource::CpuSeconds => "cpu_s",
        }
    }

    fn raw(self) -> libc::c_int {
        (match self {
            Resource::OpenFiles => libc::RLIMIT_NOFILE,
            Resource::Processes => libc::RLIMIT_NPROC,
            Resource::CoreBytes => libc::RLIMIT_CORE,
            Resource::AddressSpace => libc::RLIMIT_AS,
            Resource::CpuSeconds => libc::RLIMIT_CPU,
        }) as libc::c_int
    }
}

/// A resource limit a job starts with: soft and hard limit both `value`, so that the job
/// cannot raise it (as systemd's `LimitNOFILE=N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub resource: Resource,
    pub value: u64,
}

/// How a job's process is set up before `exec`, beyond [`JobCommand`]; the default
/// changes nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct JobSetup<'a> {
    /// The `cgroup.procs` file of the cgroup the job starts in, open for writing.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    /// Resource limits.
    pub limits: &'a [Limit],
    /// The niceness (-20 to 19; below the spawner's own needs privileges).
    pub nice: Option<i32>,
    /// The user to run as (needs privileges).
    pub credentials: Option<&'a Credentials>,
}

/// Why a job could not be started, with the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("empty command")]
    EmptyCommand,
    #[error("an argument or environment entry holds a NUL byte")]
    NulByte,
    #[error("cannot change to directory {dir}{}: {source}", as_user(.user))]
    Cwd {
        dir: String,
        /// The user the job was switched to, if any.
        user: Option<String>,
        source: io::Error,
    },
    #[error("cannot execute `{program}`{}: {source}", as_user(.user))]
    Exec {
        program: String,
        /// The user the job was switched to, if any.
        user: Option<String>,
        source: io::Error,
    },
    #[error("cannot move the job into its cgroup: {0}")]
    Cgroup(io::Error),
    #[error("cannot set rlimits.{} to {value}: {source}", .resource.key())]
    Limit {
        resource: Resource,
        value: u64,
        source: io::Error,
    },
    #[error("cannot set nice {nice}: {source}")]
    Nice { nice: i32, source: io::Error },
    #[error("cannot switch to user {user} (uid {uid}, gid {gid}): {source}")]
    Credentials {
        user: String,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("cannot set up the job's process: {0}")]
    Setup(io::Error),
}

/// ` as user NAME`, or nothing.
fn as_user(user: &Option<String>) -> String {
    user.as_ref()
        .map_or(String::new(), |u| format!(" as user {u}"))
}

/// Starts job processes; owns the stack their clone runs on, reused from job to job.
#[derive(Debug)]
pub struct Spawner {
    stack: Vec<u8>,
    /// See [`Spawner::sharing_fd_table`].
    low: Option<LowFds>,
}

/// Two descriptors kept at low numbers for a spawn's stdin and output (pointing at
/// `/dev/null` between spawns), and `/dev/null` itself to point them back at.
#[derive(Debug)]
struct LowFds {
    stdin: OwnedFd,
    output: OwnedFd,
    null: OwnedFd,
}

impl Default for Spawner {
    fn default() -> Self {
        Self::new()
    }
}

impl Spawner {
    /// A spawner with a 64 KiB child stack (the child only makes a few libc calls).
    pub fn new() -> Spawner {
        Spawner {
            stack: vec![0; 64 * 1024],
            low: None,
        }
    }

    /// A spawner for a process with many descriptors (the supervisor: two a child): its
    /// children share the table at `clone` and copy only its lowest few (see
    /// `child::own_fd_table`), where a copy of the whole table and closing it at `exec`
    /// cost ~45 µs of CPU a start at 1,000 descriptors. For that, a command's stdin and
    /// output are put at two descriptors of its own taken now, while they are still
    /// low: make it early. Falls back to a plain spawner (and says so in the log) when
    /// the descriptors cannot be had.
    pub fn sharing_fd_table() -> Spawner {
        let mut s = Spawner::new();
        match LowFds::take() {
            Ok(low) => s.low = Some(low),
            Err(e) => log::warn!("spawns copy the descriptor table: {e}"),
        }
        s
    }

    /// Start `cmd` in a fresh process group, with default signal dispositions, an
    /// empty signal mask, only fds 0-2 open across `exec`, and SIGKILL delivered to it
    /// when the calling thread exits (call from the long-lived main thread). Returns
    /// its pid; reap it with [`wait_pid`].
    pub fn spawn(&mut self, cmd: &JobCommand<'_>) -> Result<u32, SpawnError> {
        self.spawn_with(cmd, &JobSetup::default())
    }

    /// [`Spawner::spawn`], with the process set up as `setup` says before `exec`: moved
    /// into its cgroup, given its limits and niceness, then switched to its user (whose
    /// permissions then apply to the working directory and the program). The death
    /// signal is set after the switch (a change of user clears it).
    pub fn spawn_with(
        &mut self,
        cmd: &JobCommand<'_>,
        setup: &JobSetup<'_>,
    ) -> Result<u32, SpawnError> {
        let Some(program) = cmd.argv.first() else {
            return Err(SpawnError::EmptyCommand);
        };
        let strings = CStrings::of(cmd, program)?;
        // The child dup2()s these onto 0-2; keep them clear of 0-2 themselves, so that
        // no dup2 overwrites a source still to be copied.
        let stdin = FdAbove2::new(cmd.stdin.as_raw_fd())?;
        let output = FdAbove2::new(cmd.output.as_raw_fd())?;
        let mut plan = ChildPlan::new(cmd, setup, strings, stdin.fd, output.fd);
        if let Some(low) = &self.low {
            // The command's descriptors at our low ones, so that the child's own table
            // need hold no more than the few below them.
            if let Err(e) = low.hold(stdin.fd, output.fd) {
                low.release();
                return Err(SpawnError::Setup(e));
            }
            plan.stdin = low.stdin.as_raw_fd();
            plan.output = low.output.as_raw_fd();
            plan.unshare_from = plan.stdin.max(plan.output) + 1;
        }
        let pid = self.clone_child(&mut plan);
        if let Some(low) = &self.low {
            // Never hold a command's pipe open past its spawn: its reader must see the
            // end of it when the writer closes it.
            low.release();
        }
        let pid = pid?;
        let step = plan.failed_step.load(Ordering::Acquire);
        if step == 0 {
            return Ok(pid as u32);
        }
        if step == plan::STEP_UNSHARE {
            // A kernel without CLOSE_RANGE_UNSHARE (before 5.9): copy the table, as
            // before, from now on.
            let _ = wait_pid(pid as u32);
            log::warn!("spawns copy the descriptor table: this kernel cannot share it");
            self.low = None;
            return self.spawn_with(cmd, setup);
        }
        // The child wrote why and called _exit: reap it before saying so.
        let _ = wait_pid(pid as u32);
        Err(plan.error(step, cmd, setup, program))
    }

    /// Run [`child_main`] on `plan` in a clone of this process that shares its memory,
    /// on our stack; returns once the child has exec'd or exited, with its pid.
    fn clone_child(&mut self, plan: &mut ChildPlan) -> Result<libc::pid_t, SpawnError> {
        // SAFETY: the stack top is inside `self.stack`, 16-byte aligned, and the
        // buffer outlives the child's use of it: with CLONE_VFORK, clone() returns
        // only once the child has exec'd or exited. All signals are blocked around the
        // clone so that no handler of ours runs on the child's stack; the child resets
        // dispositions before unblocking. `plan` (and the CStrings it points into,
        // which it owns) is borrowed for the whole call, so lives until after clone()
        // returns.
        unsafe {
            let top = self.stack.as_mut_ptr().add(self.stack.len());
            let top = (top as usize & !15) as *mut libc::c_void;
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            // Sharing the table (CLONE_FILES) only when the child makes its own before it
            // changes a descriptor (`unshare_from`).
            let files = if plan.unshare_from > 2 {
                libc::CLONE_FILES
            } else {
                0
            };
            let pid = libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | files | libc::SIGCHLD,
                plan as *mut ChildPlan as *mut libc::c_void,
            );
            let clone_errno = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(SpawnError::Setup(clone_errno));
            }
            Ok(pid)
        }
    }
}

impl LowFds {
    /// `/dev/null` three times, the first two at the lowest numbers above 2 that are
    /// free now.
    fn take() -> io::Result<LowFds> {
        let null: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?
            .into();
        let low = || -> io::Result<OwnedFd> {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the duplicate is ours.
            let fd = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a new descriptor, owned by nothing else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let (stdin, output) = (low()?, low()?);
        Ok(LowFds {
            stdin,
            output,
            null,
        })
    }

    /// Our low descriptors now point where `stdin` and `output` do.
    fn hold(&self, stdin: RawFd, output: RawFd) -> io::Result<()> {
        for (from, to) in [(stdin, &self.stdin), (output, &self.output)] {
            // SAFETY: dup3 onto a descriptor we own (it is replaced atomically, so no
            // other thread can take its number meanwhile) from one the caller lends.
            if unsafe { libc::dup3(from, to.as_raw_fd(), libc::O_CLOEXEC) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Back to `/dev/null`: what they pointed at is no longer held by us.
    fn release(&self) {
        for to in [&self.stdin, &self.output] {
            // SAFETY: as in `hold`.
            unsafe { libc::dup3(self.null.as_raw_fd(), to.as_raw_fd(), libc::O_CLOEXEC) };
        }
    }
}

/// Wait for a child of this process to end (blocking) and say how.
pub fn wait_pid(pid: u32) -> io::Result<Ended> {
    loop {
        match waitpid(Pid::from_raw(pid as i32), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Ended::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Ended::Signal(sig as i32)),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Wait (blocking) for the child `pid` to end and say how, reaping every other child of
/// this process that ends meanwhile: a subreaper's orphans (what a job left when the
/// process that started it ended) would otherwise stay zombies until then.
pub fn wait_pid_reaping_others(pid: u32) -> io::Result<Ended> {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() as u32 == pid => {
                return Ok(Ended::Code(code))
            }
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() as u32 == pid => {
                return Ok(Ended::Signal(sig as i32))
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
