//! The small OS layer of `supervisor`: spawning with a clean slate, reaping, signalling
//! process groups, and the pidfile lock.
//!
//! This is the only crate of the workspace that may use `unsafe`, and it does so in three
//! places: the hook that runs between `fork` and `exec` of the supervisor's own children
//! ([`spawn_clean`]), the vfork-style start of a process ([`Spawner`], in `spawn.rs`),
//! which also moves a job into its cgroup, sets its limits and switches it to its user,
//! and two tunables of glibc's allocator ([`keep_freed_memory`], `malloc.rs`). Everything else goes through nix's safe wrappers: user lookups
//! ([`users`]) and the cgroup v2 files of jobs ([`cgroup`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub mod cgroup;
mod malloc;
mod spawn;
mod tmp;
mod tree;
pub mod users;
pub use malloc::keep_freed_memory;
pub use spawn::{
    wait_pid, wait_pid_reaping_others, Credentials, JobCommand, JobSetup, Limit, Resource,
    SpawnError, Spawner,
};
pub use tmp::memory_temp_dir;
pub use tree::{
    children, descendants, kill_descendants, reap_leaving_any, reap_until_none, sigkill_descendants,
};

/// How a process ended: an exit code or a signal, never squashed into one number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It called `exit(code)`.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// Spawn `cmd` in a fresh process group, with every inherited descriptor above 2 marked
/// close-on-exec, and (with `death_signal`) that signal delivered to it when the
/// spawning thread exits: SIGKILL, or a signal the child catches to clean up first.
///
/// Call it from the long-lived main thread only: Linux ties `PR_SET_PDEATHSIG` to the
/// thread that forked, not to the process.
pub fn spawn_clean(cmd: &mut Command, death_signal: Option<Signal>) -> io::Result<Child> {
    cmd.process_group(0);
    let parent = nix::unistd::getpid();
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It makes three raw syscalls (prctl,
    // getppid, close_range), allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            if let Some(sig) = death_signal {
                nix::sys::prctl::set_pdeathsig(sig).map_err(io::Error::from)?;
                // The parent may have died between fork and prctl: then no signal comes.
                if nix::unistd::getppid() != parent {
                    return Err(io::Error::other("parent exited during spawn"));
                }
            }
            // ipc-channel's accepted sockets lack O_CLOEXEC: without this, every child
            // would inherit every earlier child's channel and keep it from closing.
            let rc = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Become the reaper of orphaned descendants (a job's background children).
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Reap every child that has ended, without blocking. SIGCHLD coalesces, so one
/// signal may stand for several exits: call this until it returns nothing new.
pub fn reap_all() -> Vec<(u32, Ended)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid.as_raw() as u32, Ended::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                out.push((pid.as_raw() as u32, Ended::Signal(sig as i32)))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return out,
            Ok(_) => continue, // stopped/continued: not an end
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("waitpid: {e}");
                return out;
            }
        }
    }
}

/// Turn a std exit status into an [`Ended`].
pub fn ended(status: std::process::ExitStatus) -> Ended {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Ended::Code(c),
        (None, Some(s)) => Ended::Signal(s),
        (None, None) => Ended::Code(-1),
    }
}

/// `pid` as a process id that names one process: 0 would mean our own process group,
/// and a value past `i32::MAX` a negative one (a whole group, or every process). Such a
/// value (from an IPC message, a store row, /proc) is refused, never signalled.
fn one_process(pid: u32) -> io::Result<Pid> {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => Ok(Pid::from_raw(p)),
        _ => Err(io::Error::other(format!(
            "refusing to signal process {pid}"
        ))),
    }
}

/// Send `sig` to process `pid`; a process that is already gone is not an error.
pub fn signal_pid(pid: u32, sig: Signal) -> io::Result<()> {
    match signal::kill(one_process(pid)?, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Send `sig` to process group `pgid`; a group that is already gone is not an error.
pub fn signal_group(pgid: u32, sig: Signal) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::other(format!(
            "refusing to signal process group {pgid}"
        )));
    }
    match signal::killpg(one_process(pgid)?, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Rename `from` to `to` unless `to` exists (`RENAME_NOREPLACE`, atomically). Returns
/// `Ok(false)` when `to` exists and nothing was renamed.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        // A filesystem without RENAME_NOREPLACE: check, then rename (racy only
        // against another writer of `to`, and there is none: each log has one worker).
        Err(Errno::EINVAL) => {
            if to.exists() {
                return Ok(false);
            }
            std::fs::rename(from, to).map(|()| true)
        }
        Err(e) => Err(e.into()),
    }
}

/// The content of the regular file at `path`, at most `max` bytes. Opened without
/// blocking: a FIFO, a device or a directory there is an error at once, where a plain
/// read would wait forever for a FIFO's writer (or never end on `/dev/zero`).
pub fn read_regular_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("over {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Whether a process with this pid exists (signal 0) and has not exited: a zombie (dead,
/// not yet reaped by its parent; a supervisor killed with SIGKILL stays one until its
/// parent waits for it) is not alive.
pub fn pid_alive(pid: u32) -> bool {
    one_process(pid).is_ok_and(|p| !matches!(signal::kill(p, None), Err(Errno::ESRCH)))
        && !matches!(process_state(pid), Some('Z' | 'X' | 'x'))
}

/// The state of a process (field 3 of `/proc/PID/stat`: `R`, `S`, `Z`, ...), if it can
/// be read.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.get(stat.rfind(')')? + 2..)?.chars().next()
}

/// The start time of a process in clock ticks since boot (field 22 of
/// `/proc/PID/stat`): with the pid, it names one process even after pid reuse.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Live processes (other than this one) whose environment sets `var` to one of
/// `values`: what the jobs of a supervisor that died together with its workers left
/// behind (a job's children inherit its `SUPERVISOR_JOB_ID`, even those that left its
/// process group). Processes whose environment cannot be read are skipped.
pub fn processes_with_env(var: &str, values: &std::collections::BTreeSet<String>) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            env.split(|&b| b == 0).any(|entry| {
                let entry = String::from_utf8_lossy(entry);
                entry
                    .split_once('=')
                    .is_some_and(|(k, v)| k == var && values.contains(v))
            })
        })
        .collect();
    found.sort_unstable();
    found
}

/// Every process but this one whose stdout or stderr is a file under `dir`: what a job
/// started, however it changed its environment, its session or its parent, as long as it
/// kept the job's log as its output.
pub fn processes_writing_under(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            [1, 2].iter().any(|fd| {
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .is_ok_and(|p| p.starts_with(&dir))
            })
        })
        .collect();
    found.sort_unstable();
    found
}

/// A held pidfile: an exclusive `flock` on `<state_dir>/supervisor.pid`, released by
/// the kernel when the process dies, so a stale file can never be mistaken for a
/// running supervisor.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    _lock: Flock<File>,
}

/// What a pidfile says about the supervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PidFileState {
    /// No pidfile.
    Missing,
    /// Locked by a live supervisor with this pid.
    Running(u32),
    /// The file is there but nobody holds its lock: the supervisor died. The pid it
    /// names (if readable) may since belong to an unrelated process.
    Stale(Option<u32>),
}

impl PidFile {
    /// Take the lock and write our pid, or say who holds it.
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileState> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|_| PidFileState::Missing)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let pid = std::process::id();
                let write = (|| -> io::Result<()> {
                    lock.set_len(0)?;
                    lock.rewind()?;
                    writeln!(lock, "{pid}")?;
                    lock.flush()
                })();
                if write.is_err() {
                    return Err(PidFileState::Missing);
                }
                Ok(PidFile {
                    path: path.to_path_buf(),
                    _lock: lock,
                })
            }
            Err((_, _)) => Err(Self::inspect(path)),
        }
    }

    /// Whether a supervisor holds the pidfile at `path`, without taking it.
    pub fn inspect(path: &Path) -> PidFileState {
        let Ok(mut file) = File::open(path) else {
            return PidFileState::Missing;
        };
        let mut text = String::new();
        let pid = file
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| text.trim().parse::<u32>().ok());
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_unlocked_on_drop) => PidFileState::Stale(pid),
            Err(_) => match pid {
                Some(pid) => PidFileState::Running(pid),
                // Locked but not yet written: the supervisor is starting up.
                None => PidFileState::Running(0),
            },
        }
    }

    /// Where the pidfile is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    /// Remove the pidfile, if the file at its path is still ours: one whose state dir was
    /// removed under it must not remove the pidfile of the run that took the path since.
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let id = |m: std::fs::Metadata| (m.dev(), m.ino());
        let ours = self._lock.metadata().map(id);
        let there = std::fs::metadata(&self.path).map(id);
        if matches!((ours, there), (Ok(a), Ok(b)) if a == b) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub use nix::sys::signal::Signal as Sig;

/// Set the process's file mode creation mask; returns the one it replaces.
pub fn set_umask(mask: u32) -> u32 {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        mask as nix::libc::mode_t,
    ));
    old.bits() as u32
}

/// Give SIGPIPE back its default action, which the Rust runtime sets to "ignore": a
/// command-line verb whose output is closed early (`supervisor jobs | head`) then ends
/// quietly, killed by SIGPIPE as `cat` or `seq` are, instead of failing (or panicking)
/// on a write that returns EPIPE. Never for the supervisor or its children: a closed
/// pipe must not kill them.
pub fn default_sigpipe() -> io::Result<()> {
    // Safety: SIG_DFL installs no handler, so no code of ours can ever run in a signal
    // context; changing a disposition is process-wide but races with nothing here (it
    // is called first thing in `main`, before any thread exists).
    #[allow(unsafe_code)]
    let previous = unsafe { signal::signal(Signal::SIGPIPE, signal::SigHandler::SigDfl) };
    previous.map(drop).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_that_name_no_single_process_are_never_signalled() {
        for pid in [0, u32::MAX, 1 << 31] {
            assert!(signal_pid(pid, Signal::SIGKILL).is_err(), "{pid}");
            assert!(signal_group(pid, Signal::SIGKILL).is_err(), "{pid}");
            assert!(!pid_alive(pid), "{pid}");
        }
        assert!(pid_alive(std::process::id()));
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited, not reaped: a zombie until `wait`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_state(pid) != Some('Z') {
            assert!(std::time::Instant::now() < deadline, "never a zombie");
            std::thread::yield_now();
        }
        assert!(!pid_alive(pid));
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn pidfile_is_exclusive_and_inspectable() {
        let dir = std::env::temp_dir().join(format!("sv-os-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("supervisor.pid");
        assert_eq!(PidFile::inspect(&path), PidFileState::Missing);
        let held = PidFile::acquire(&path).unwrap();
        assert_eq!(
            PidFile::inspect(&path),
            PidFileState::Running(std::process::id())
        );
        // flock locks belong to the open file description: a second open conflicts.
        assert_eq!(
            PidFile::acquire(&path).unwrap_err(),
            PidFileState::Running(std::process::id())
        );
        drop(held);
        assert_eq!(PidFile::inspect(&path), PidFileState::Missing);
        std::fs::write(&path, "4242\n").unwrap();
        assert_eq!(PidFile::inspect(&path), PidFileState::Stale(Some(4242)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spawn_clean_gives_a_new_process_group_and_no_extra_fds() {
        let leak = File::open("/dev/null").unwrap(); // an fd without O_CLOEXEC? std sets it; still must not leak
        let _ = &leak;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ls /proc/self/fd | wc -l; ps -o pgid= -p $$"]);
        cmd.stdout(std::process::Stdio::piped());
        let child = spawn_clean(&mut cmd, Some(Signal::SIGKILL)).unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        // 0, 1, 2 and the fd `ls` opens for /proc/self/fd.
        assert_eq!(lines.next().unwrap().trim(), "4", "{text}");
        assert_eq!(lines.next().unwrap().trim(), pid.to_string(), "{text}");
    }

    #[test]
    fn processes_are_found_by_their_environment() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").env("SV_OS_TEST_MARK", "m-42");
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        let want: std::collections::BTreeSet<String> = ["m-42".to_string()].into();
        // The environment is the child's once it has exec'd: wait for that.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = vec![];
        while std::time::Instant::now() < deadline {
            found = processes_with_env("SV_OS_TEST_MARK", &want);
            if !found.is_empty() {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(found, [pid]);
        let other: std::collections::BTreeSet<String> = ["m-43".to_string()].into();
        assert!(processes_with_env("SV_OS_TEST_MARK", &other).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn start_ticks_name_a_live_process() {
        assert!(process_start_ticks(std::process::id()).is_some());
        assert!(pid_alive(std::process::id()));
    }
}
