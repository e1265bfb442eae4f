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

#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::Ended;

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
}

impl Default for Spawner {
    fn default() -> Self {
        Self::new()
    }
}

/// Steps of the child, recorded on failure.
const STEP_SETUP: i32 = 1;
const STEP_CWD: i32 = 2;
const STEP_EXEC: i32 = 3;
const STEP_CGROUP: i32 = 4;
/// The failed limit's index is in the plan's `detail` slot.
const STEP_LIMIT: i32 = 5;
const STEP_NICE: i32 = 6;
const STEP_CREDENTIALS: i32 = 7;

/// Everything the child needs, prepared (and allocated) by the parent.
struct ChildPlan {
    candidates: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    stdin: RawFd,
    output: RawFd,
    death_signal: libc::c_int,
    umask: Option<libc::mode_t>,
    parent: libc::pid_t,
    /// `cgroup.procs` to write "0" to, or -1.
    cgroup_procs: RawFd,
    limits: Vec<(libc::c_int, libc::rlimit64)>,
    nice: Option<libc::c_int>,
    /// uid, gid and the supplementary groups.
    credentials: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    failed_step: AtomicI32,
    errno: AtomicI32,
    /// Which limit failed, for [`STEP_LIMIT`].
    detail: AtomicI32,
}

impl Spawner {
    /// A spawner with a 64 KiB child stack (the child only makes a few libc calls).
    pub fn new() -> Spawner {
        Spawner {
            stack: vec![0; 64 * 1024],
        }
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
        let cstr = |b: &[u8]| CString::new(b).map_err(|_| SpawnError::NulByte);
        let args: Vec<CString> = cmd
            .argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = cmd
            .env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone().into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstr(&kv)
            })
            .collect::<Result<_, _>>()?;
        let path_var = cmd
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let candidates = match cmd.program {
            Some(path) => vec![cstr(path.as_os_str().as_bytes())?],
            None => candidates(program, path_var)?,
        };
        let cwd = cmd
            .cwd
            .map(|d| cstr(d.as_os_str().as_bytes()))
            .transpose()?;
        // The child dup2()s these onto 0-2; keep them clear of 0-2 themselves, so that
        // no dup2 overwrites a source still to be copied.
        let stdin = FdAbove2::new(cmd.stdin.as_raw_fd())?;
        let output = FdAbove2::new(cmd.output.as_raw_fd())?;

        let mut plan = ChildPlan {
            argv: args
                .iter()
                .map(|a| a.as_ptr())
                .chain([std::ptr::null()])
                .collect(),
            envp: env
                .iter()
                .map(|e| e.as_ptr())
                .chain([std::ptr::null()])
                .collect(),
            candidates,
            cwd,
            stdin: stdin.fd,
            output: output.fd,
            death_signal: cmd.death_signal as libc::c_int,
            umask: cmd.umask.map(|m| (m & 0o777) as libc::mode_t),
            parent: nix::unistd::getpid().as_raw(),
            cgroup_procs: setup.cgroup_procs.map_or(-1, |fd| fd.as_raw_fd()),
            limits: setup
                .limits
                .iter()
                .map(|l| {
                    let value = l.value as libc::rlim64_t;
                    (
                        l.resource.raw(),
                        libc::rlimit64 {
                            rlim_cur: value,
                            rlim_max: value,
                        },
                    )
                })
                .collect(),
            nice: setup.nice,
            credentials: setup.credentials.map(|c| (c.uid, c.gid, c.groups.clone())),
            failed_step: AtomicI32::new(0),
            errno: AtomicI32::new(0),
            detail: AtomicI32::new(0),
        };

        // SAFETY: the stack top is inside `self.stack`, 16-byte aligned, and the
        // buffer outlives the child's use of it: with CLONE_VFORK, clone() returns
        // only once the child has exec'd or exited. All signals are blocked around the
        // clone so that no handler of ours runs on the child's stack; the child resets
        // dispositions before unblocking. `plan` (and the CStrings it points into)
        // lives until after clone() returns.
        let pid = unsafe {
            let top = self.stack.as_mut_ptr().add(self.stack.len());
            let top = (top as usize & !15) as *mut libc::c_void;
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            let pid = libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &mut plan as *mut ChildPlan as *mut libc::c_void,
            );
            let clone_errno = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(SpawnError::Setup(clone_errno));
            }
            pid
        };
        drop((args, env));
        let step = plan.failed_step.load(Ordering::Acquire);
        if step == 0 {
            return Ok(pid as u32);
        }
        // The child wrote why and called _exit: reap it before saying so.
        let _ = wait_pid(pid as u32);
        let source = io::Error::from_raw_os_error(plan.errno.load(Ordering::Acquire));
        let user = setup.credentials.map(|c| c.user.clone());
        Err(match step {
            STEP_CWD => SpawnError::Cwd {
                dir: cmd.cwd.map(|d| d.display().to_string()).unwrap_or_default(),
                user,
                source,
            },
            STEP_EXEC => SpawnError::Exec {
                program: program.clone(),
                user,
                source,
            },
            STEP_CGROUP => SpawnError::Cgroup(source),
            STEP_LIMIT => {
                let index = plan.detail.load(Ordering::Acquire);
                match usize::try_from(index)
                    .ok()
                    .and_then(|i| setup.limits.get(i))
                {
                    Some(limit) => SpawnError::Limit {
                        resource: limit.resource,
                        value: limit.value,
                        source,
                    },
                    None => SpawnError::Setup(source),
                }
            }
            STEP_NICE => SpawnError::Nice {
                nice: setup.nice.unwrap_or_default(),
                source,
            },
            STEP_CREDENTIALS => match setup.credentials {
                Some(c) => SpawnError::Credentials {
                    user: c.user.clone(),
                    uid: c.uid,
                    gid: c.gid,
                    source,
                },
                None => SpawnError::Setup(source),
            },
            _ => SpawnError::Setup(source),
        })
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

/// The paths `execve` should try, in order: the program itself when it names a path,
/// else the program in each `PATH` directory (as execvp does; an empty entry is `.`).
fn candidates(program: &str, path: Option<&OsStr>) -> Result<Vec<CString>, SpawnError> {
    if program.is_empty() {
        return Err(SpawnError::EmptyCommand);
    }
    let to_c = |b: Vec<u8>| CString::new(b).map_err(|_| SpawnError::NulByte);
    if program.contains('/') {
        return Ok(vec![to_c(program.as_bytes().to_vec())?]);
    }
    let path = path.map_or(&b"/usr/local/bin:/usr/bin:/bin"[..], |p| p.as_bytes());
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut full = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            full.push(b'/');
            full.extend_from_slice(program.as_bytes());
            to_c(full)
        })
        .collect()
}

/// An fd guaranteed to be above 2: the original, or a close-on-exec duplicate that is
/// closed on drop.
struct FdAbove2 {
    fd: RawFd,
    owned: bool,
}

impl FdAbove2 {
    fn new(fd: RawFd) -> Result<FdAbove2, SpawnError> {
        if fd > 2 {
            return Ok(FdAbove2 { fd, owned: false });
        }
        // SAFETY: F_DUPFD_CLOEXEC on an fd the caller borrowed to us; the duplicate is
        // ours and closed on drop.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(SpawnError::Setup(io::Error::last_os_error()));
        }
        Ok(FdAbove2 {
            fd: dup,
            owned: true,
        })
    }
}

impl Drop for FdAbove2 {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: we own this duplicate.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// Record a failed step and leave. Never returns.
///
/// SAFETY (for the caller): only to be called in the cloned child.
unsafe fn fail(plan: &ChildPlan, step: i32, errno: i32) -> ! {
    plan.errno.store(errno, Ordering::Release);
    plan.failed_step.store(step, Ordering::Release);
    libc::_exit(127)
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The cloned child, up to `execve`. It shares the parent's memory, so it only reads
/// `plan`, writes its two result slots, and makes raw async-signal-safe libc calls.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildPlan`, alive while the parent sleeps in
    // clone() (CLONE_VFORK). Everything below is a plain system call wrapper.
    unsafe {
        let plan = &*(arg as *const ChildPlan);
        // Default dispositions for every signal (the handler table is this child's own
        // copy: no CLONE_SIGHAND). SIGKILL and SIGSTOP refuse, which is fine.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..65 {
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
        if libc::setpgid(0, 0) != 0 {
            fail(plan, STEP_SETUP, last_errno());
        }
        if let Some(mask) = plan.umask {
            libc::umask(mask);
        }
        // Into the job's cgroup while still privileged ("0": the writing process).
        if plan.cgroup_procs >= 0 && libc::write(plan.cgroup_procs, b"0".as_ptr().cast(), 1) != 1 {
            fail(plan, STEP_CGROUP, last_errno());
        }
        // Limits and niceness before the switch: a privileged spawner may set them past
        // its own, and the job cannot undo them afterwards.
        for (i, (resource, limit)) in plan.limits.iter().enumerate() {
            if libc::syscall(
                libc::SYS_prlimit64,
                0 as libc::c_long,
                libc::c_long::from(*resource),
                limit as *const libc::rlimit64,
                std::ptr::null_mut::<libc::rlimit64>(),
            ) != 0
            {
                plan.detail.store(i as i32, Ordering::Release);
                fail(plan, STEP_LIMIT, last_errno());
            }
        }
        if let Some(nice) = plan.nice {
            let (which, who) = (libc::PRIO_PROCESS as libc::c_long, 0 as libc::c_long);
            if libc::syscall(libc::SYS_setpriority, which, who, libc::c_long::from(nice)) != 0 {
                fail(plan, STEP_NICE, last_errno());
            }
        }
        // Groups, then gid, then uid (after it, no more privilege to change the others).
        // Raw system calls: see the module's comment on glibc's wrappers.
        if let Some((uid, gid, groups)) = &plan.credentials {
            let (uid, gid) = (libc::c_long::from(*uid), libc::c_long::from(*gid));
            if libc::syscall(
                libc::SYS_setgroups,
                groups.len() as libc::c_long,
                groups.as_ptr(),
            ) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                fail(plan, STEP_CREDENTIALS, last_errno());
            }
        }
        // After the switch: a change of effective user or group clears the death signal.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            plan.death_signal as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(plan, STEP_SETUP, last_errno());
        }
        // The parent may have died before prctl: then no signal would ever come.
        if libc::getppid() != plan.parent {
            fail(plan, STEP_SETUP, libc::ESRCH);
        }
        if libc::dup2(plan.stdin, 0) < 0
            || libc::dup2(plan.output, 1) < 0
            || libc::dup2(plan.output, 2) < 0
        {
            fail(plan, STEP_SETUP, last_errno());
        }
        // Nothing above 2 crosses exec (the fd table is this child's own copy).
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        ) != 0
        {
            fail(plan, STEP_SETUP, last_errno());
        }
        if let Some(dir) = &plan.cwd {
            if libc::chdir(dir.as_ptr()) != 0 {
                fail(plan, STEP_CWD, last_errno());
            }
        }
        let empty: libc::sigset_t = {
            let mut s = std::mem::zeroed();
            libc::sigemptyset(&mut s);
            s
        };
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // As execvp: try each candidate; EACCES anywhere wins over a later ENOENT.
        let mut errno = libc::ENOENT;
        let mut denied = false;
        for path in &plan.candidates {
            libc::execve(path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            errno = last_errno();
            match errno {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => break,
            }
        }
        fail(
            plan,
            STEP_EXEC,
            if denied && errno != libc::ENOEXEC {
                libc::EACCES
            } else {
                errno
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::AsFd;

    fn run(argv: &[&str], cwd: Option<&Path>) -> (Result<Ended, SpawnError>, String) {
        run_with(argv, cwd, &JobSetup::default())
    }

    fn run_with(
        argv: &[&str],
        cwd: Option<&Path>,
        setup: &JobSetup<'_>,
    ) -> (Result<Ended, SpawnError>, String) {
        let dir = tempfile_dir();
        let out_path = dir.join("out");
        let out = File::create(&out_path).unwrap();
        let null = File::open("/dev/null").unwrap();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        env.push(("SPAWN_TEST".into(), "yes".into()));
        let cmd = JobCommand {
            argv: &argv,
            env,
            cwd,
            stdin: null.as_fd(),
            output: out.as_fd(),
            program: None,
            death_signal: nix::sys::signal::Signal::SIGKILL,
            umask: None,
        };
        let result = Spawner::new()
            .spawn_with(&cmd, setup)
            .map(|pid| wait_pid(pid).unwrap());
        let mut text = String::new();
        File::open(&out_path)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (result, text)
    }

    fn tempfile_dir() -> std::path::PathBuf {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sv-spawn-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn runs_with_env_cwd_output_and_a_clean_slate() {
        let script = "echo env=$SPAWN_TEST; pwd; ls /proc/self/fd | wc -l; \
                      ps -o pgid= -p $$ | tr -d ' '; echo $$; \
                      grep -E '^(SigBlk|SigIgn)' /proc/self/status; echo err >&2; \
                      read x; echo read=$?";
        let (res, text) = run(&["sh", "-c", script], Some(Path::new("/")));
        assert_eq!(res.unwrap(), Ended::Code(0), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "env=yes");
        assert_eq!(lines[1], "/");
        // 0, 1, 2 and the fd ls opens for /proc/self/fd.
        assert_eq!(lines[2].trim(), "4", "{text}");
        assert_eq!(lines[3], lines[4], "a fresh process group: {text}");
        // Nothing blocked or ignored; glibc keeps signals 32 and 33 (its own) out of
        // reach of sigaction, so they stay as inherited.
        let mask = |line: &str| {
            let hex = line.split('\t').nth(1).unwrap();
            u64::from_str_radix(hex, 16).unwrap() & !(0b11 << 31)
        };
        assert_eq!(mask(lines[5]), 0, "{text}");
        assert_eq!(mask(lines[6]), 0, "{text}");
        assert_eq!(lines[7], "err");
        assert_eq!(lines[8], "read=1", "stdin is /dev/null: {text}");
    }

    #[test]
    fn exit_codes_and_signals_come_back() {
        assert_eq!(
            run(&["sh", "-c", "exit 7"], None).0.unwrap(),
            Ended::Code(7)
        );
        assert_eq!(
            run(&["sh", "-c", "kill -TERM $$"], None).0.unwrap(),
            Ended::Signal(libc::SIGTERM)
        );
    }

    #[test]
    fn failures_name_the_step_and_reap_the_child() {
        let err = run(&["no-such-program-here"], None).0.unwrap_err();
        assert!(
            matches!(&err, SpawnError::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
        assert!(err.to_string().contains("no-such-program-here"), "{err}");
        let err = run(&["/etc/passwd"], None).0.unwrap_err();
        assert!(
            matches!(&err, SpawnError::Exec { source, .. } if source.kind() == io::ErrorKind::PermissionDenied),
            "{err}"
        );
        let err = run(&["true"], Some(Path::new("/no/such/dir")))
            .0
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
        assert!(matches!(err, SpawnError::Cwd { .. }), "{err}");
        assert!(matches!(run(&[], None).0, Err(SpawnError::EmptyCommand)));
    }

    fn limits() -> Vec<Limit> {
        [
            (Resource::OpenFiles, 37),
            (Resource::Processes, 5000),
            (Resource::CoreBytes, 0),
            (Resource::AddressSpace, 4 << 30),
            (Resource::CpuSeconds, 600),
        ]
        .map(|(resource, value)| Limit { resource, value })
        .to_vec()
    }

    #[test]
    fn limits_and_niceness_apply_to_the_job_alone() {
        let limits = limits();
        let setup = JobSetup {
            limits: &limits,
            nice: Some(7),
            ..JobSetup::default()
        };
        // Soft and hard alike; niceness is field 19 of /proc/PID/stat.
        let script = "ulimit -Sn; ulimit -Hn; ulimit -p; ulimit -c; ulimit -v; ulimit -t; \
                      cut -d' ' -f19 /proc/self/stat";
        let (res, text) = run_with(&["sh", "-c", script], None, &setup);
        assert_eq!(res.unwrap(), Ended::Code(0), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            ["37", "37", "5000", "0", "4194304", "600", "7"],
            "{text}"
        );
        // The spawner's own are untouched.
        let own =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_ne!(own, (37, 37));
        // A file descriptor past the limit cannot be opened.
        let (res, text) = run_with(
            &["sh", "-c", "exec 40</dev/null; echo opened"],
            None,
            &setup,
        );
        assert_ne!(res.unwrap(), Ended::Code(0), "{text}");
        assert!(!text.contains("opened"), "{text}");
    }

    #[test]
    fn a_limit_the_kernel_refuses_is_named() {
        // More file descriptors than the kernel allows (fs.nr_open).
        let limits = [Limit {
            resource: Resource::OpenFiles,
            value: u64::from(u32::MAX),
        }];
        let setup = JobSetup {
            limits: &limits,
            ..JobSetup::default()
        };
        let err = run_with(&["true"], None, &setup).0.unwrap_err();
        assert!(
            matches!(
                err,
                SpawnError::Limit {
                    resource: Resource::OpenFiles,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("rlimits.nofile"), "{err}");
    }

    /// Root's tests: switching users needs the privilege.
    fn root_or_skip(what: &str) -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("skipped: {what} needs root");
        }
        root
    }

    fn nobody() -> Credentials {
        Credentials {
            user: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534, 4242],
        }
    }

    #[test]
    fn the_job_runs_as_its_user_with_its_groups_and_keeps_its_output() {
        if !root_or_skip("switching users") {
            return;
        }
        let creds = nobody();
        let setup = JobSetup {
            credentials: Some(&creds),
            nice: Some(-3),
            ..JobSetup::default()
        };
        let script = "id -u; id -g; id -G; grep -E '^(Uid|Gid)' /proc/self/status; \
                      cut -d' ' -f19 /proc/self/stat";
        let (res, text) = run_with(&["sh", "-c", script], Some(Path::new("/")), &setup);
        assert_eq!(res.unwrap(), Ended::Code(0), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..3], ["65534", "65534", "65534 4242"], "{text}");
        // Real, effective, saved and file-system ids: no way back.
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>()[1..],
            ["65534"; 4]
        );
        assert_eq!(
            lines[4].split_whitespace().collect::<Vec<_>>()[1..],
            ["65534"; 4]
        );
        // Niceness below 0: set while still privileged.
        assert_eq!(lines[5], "-3", "{text}");
        // The worker's own identity is untouched.
        assert!(nix::unistd::geteuid().is_root());
        assert!(nix::unistd::getuid().is_root());
    }

    #[test]
    fn the_users_permissions_apply_to_its_directory_and_program() {
        if !root_or_skip("switching users") {
            return;
        }
        let creds = nobody();
        let setup = JobSetup {
            credentials: Some(&creds),
            ..JobSetup::default()
        };
        let private = tempfile_dir();
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let err = run_with(&["true"], Some(&private), &setup).0.unwrap_err();
        assert!(
            matches!(&err, SpawnError::Cwd { source, .. } if source.kind() == io::ErrorKind::PermissionDenied),
            "{err}"
        );
        assert!(err.to_string().contains("as user nobody"), "{err}");
        let script = private.join("job.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let err = run_with(&[script.to_str().unwrap()], None, &setup)
            .0
            .unwrap_err();
        assert!(
            matches!(&err, SpawnError::Exec { source, .. } if source.kind() == io::ErrorKind::PermissionDenied),
            "{err}"
        );
        std::fs::remove_dir_all(&private).unwrap();
    }

    #[test]
    fn the_death_signal_survives_the_switch_of_user() {
        if !root_or_skip("switching users") {
            return;
        }
        let creds = nobody();
        let argv = vec!["sleep".to_string(), "60".to_string()];
        // Spawned from a thread that then ends: the job must get its death signal.
        let pid = std::thread::spawn(move || {
            let null = File::open("/dev/null").unwrap();
            let cmd = JobCommand {
                argv: &argv,
                env: std::env::vars_os().collect(),
                cwd: Some(Path::new("/")),
                stdin: null.as_fd(),
                output: null.as_fd(),
                program: None,
                death_signal: nix::sys::signal::Signal::SIGKILL,
                umask: None,
            };
            let setup = JobSetup {
                credentials: Some(&creds),
                ..JobSetup::default()
            };
            Spawner::new().spawn_with(&cmd, &setup).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(wait_pid(pid).unwrap(), Ended::Signal(libc::SIGKILL));
    }

    #[test]
    fn a_cgroup_that_refuses_the_job_is_named() {
        // A file that takes no write stands in for a cgroup.procs that refuses.
        let null = File::open("/dev/null").unwrap();
        let setup = JobSetup {
            cgroup_procs: Some(null.as_fd()),
            ..JobSetup::default()
        };
        let err = run_with(&["true"], None, &setup).0.unwrap_err();
        assert!(matches!(err, SpawnError::Cgroup(_)), "{err}");
        // One that takes it.
        let sink = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let setup = JobSetup {
            cgroup_procs: Some(sink.as_fd()),
            ..JobSetup::default()
        };
        assert_eq!(run_with(&["true"], None, &setup).0.unwrap(), Ended::Code(0));
    }

    #[test]
    fn path_lookup_follows_the_jobs_path() {
        let c = candidates("tool", Some(OsStr::new("/a::/b"))).unwrap();
        let c: Vec<&str> = c.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(c, ["/a/tool", "./tool", "/b/tool"]);
        let c = candidates("./x/tool", Some(OsStr::new("/a"))).unwrap();
        assert_eq!(c[0].to_str().unwrap(), "./x/tool");
    }
}
