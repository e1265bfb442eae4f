//! The parent's side of a spawn, around the clone: the [`ChildPlan`] it prepares (and
//! allocates) for the child beforehand, and, when the child reports a failed step, the
//! [`SpawnError`] that names it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicI32, Ordering};

use super::{JobCommand, JobSetup, SpawnError};

/// Steps of the child, recorded on failure.
pub(super) const STEP_SETUP: i32 = 1;
pub(super) const STEP_CWD: i32 = 2;
pub(super) const STEP_EXEC: i32 = 3;
pub(super) const STEP_CGROUP: i32 = 4;
/// The failed limit's index is in the plan's `detail` slot.
pub(super) const STEP_LIMIT: i32 = 5;
pub(super) const STEP_NICE: i32 = 6;
pub(super) const STEP_CREDENTIALS: i32 = 7;
/// The child's own descriptor table could not be made (a kernel before 5.9 has no
/// `CLOSE_RANGE_UNSHARE`): the spawner then copies the table at `clone`, as before.
pub(super) const STEP_UNSHARE: i32 = 8;

/// Everything the child needs, prepared (and allocated) by the parent.
pub(super) struct ChildPlan {
    /// What `argv` and `envp` point into, owned as long as they are.
    _args: Vec<CString>,
    _env: Vec<CString>,
    pub(super) candidates: Vec<CString>,
    pub(super) argv: Vec<*const libc::c_char>,
    pub(super) envp: Vec<*const libc::c_char>,
    pub(super) cwd: Option<CString>,
    pub(super) stdin: RawFd,
    pub(super) output: RawFd,
    pub(super) death_signal: libc::c_int,
    pub(super) umask: Option<libc::mode_t>,
    pub(super) parent: libc::pid_t,
    /// `cgroup.procs` to write "0" to, or -1.
    pub(super) cgroup_procs: RawFd,
    /// The child shares the parent's descriptor table (`CLONE_FILES`) until it makes a
    /// copy of its own holding only the descriptors below this one (`stdin` and
    /// `output` among them); 0: it has its own copy from the start.
    pub(super) unshare_from: RawFd,
    pub(super) limits: Vec<(libc::c_int, libc::rlimit64)>,
    pub(super) nice: Option<libc::c_int>,
    /// uid, gid and the supplementary groups.
    pub(super) credentials: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    pub(super) failed_step: AtomicI32,
    pub(super) errno: AtomicI32,
    /// Which limit failed, for [`STEP_LIMIT`].
    pub(super) detail: AtomicI32,
}

/// A command's strings as C strings: what `execve` and `chdir` take.
pub(super) struct CStrings {
    args: Vec<CString>,
    /// `KEY=value` entries.
    env: Vec<CString>,
    candidates: Vec<CString>,
    cwd: Option<CString>,
}

impl CStrings {
    /// Those of `cmd`, whose program is `program`; an error for a NUL byte in any of
    /// them (or an empty program).
    pub(super) fn of(cmd: &JobCommand<'_>, program: &str) -> Result<CStrings, SpawnError> {
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
        Ok(CStrings {
            args,
            env,
            candidates,
            cwd,
        })
    }
}

impl ChildPlan {
    /// The plan to start `cmd` with its `strings`, set up as `setup` says, with its
    /// stdin and output at `stdin` and `output` (both above 2).
    pub(super) fn new(
        cmd: &JobCommand<'_>,
        setup: &JobSetup<'_>,
        strings: CStrings,
        stdin: RawFd,
        output: RawFd,
    ) -> ChildPlan {
        let CStrings {
            args,
            env,
            candidates,
            cwd,
        } = strings;
        ChildPlan {
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
            _args: args,
            _env: env,
            candidates,
            cwd,
            stdin,
            output,
            death_signal: cmd.death_signal as libc::c_int,
            umask: cmd.umask.map(|m| (m & 0o777) as libc::mode_t),
            parent: nix::unistd::getpid().as_raw(),
            cgroup_procs: setup.cgroup_procs.map_or(-1, |fd| fd.as_raw_fd()),
            unshare_from: 0,
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
        }
    }

    /// Why the child could not start `cmd` (set up as `setup`, its program `program`),
    /// from the failed `step` and the errno it wrote.
    pub(super) fn error(
        &self,
        step: i32,
        cmd: &JobCommand<'_>,
        setup: &JobSetup<'_>,
        program: &str,
    ) -> SpawnError {
        let source = io::Error::from_raw_os_error(self.errno.load(Ordering::Acquire));
        let user = setup.credentials.map(|c| c.user.clone());
        match step {
            STEP_CWD => SpawnError::Cwd {
                dir: cmd.cwd.map(|d| d.display().to_string()).unwrap_or_default(),
                user,
                source,
            },
            STEP_EXEC => SpawnError::Exec {
                program: program.to_string(),
                user,
                source,
            },
            STEP_CGROUP => SpawnError::Cgroup(source),
            STEP_LIMIT => {
                let index = self.detail.load(Ordering::Acquire);
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
        }
    }
}

/// The paths `execve` should try, in order: the program itself when it names a path,
/// else the program in each `PATH` directory (as execvp does; an empty entry is `.`).
pub(super) fn candidates(program: &str, path: Option<&OsStr>) -> Result<Vec<CString>, SpawnError> {
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
pub(super) struct FdAbove2 {
    pub(super) fd: RawFd,
    owned: bool,
}

impl FdAbove2 {
    pub(super) fn new(fd: RawFd) -> Result<FdAbove2, SpawnError> {
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
