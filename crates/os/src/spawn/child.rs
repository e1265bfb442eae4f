//! The cloned child's side of a spawn, from clone() to `execve`. It shares the parent's
//! memory and runs on the spawner's stack while the parent sleeps (`CLONE_VFORK`), so
//! everything here stays async-signal-safe: raw system calls only, no allocation, no
//! lock, nothing read but the [`ChildPlan`] and nothing written but its result slots.
//! Every function but [`child_main`] is `unsafe`: it may only run in that child.

use std::io;
use std::sync::atomic::Ordering;

use super::plan::{
    ChildPlan, STEP_CGROUP, STEP_CREDENTIALS, STEP_CWD, STEP_EXEC, STEP_LIMIT, STEP_NICE,
    STEP_SETUP, STEP_UNSHARE,
};

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
pub(super) extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildPlan`, alive while the parent sleeps in
    // clone() (CLONE_VFORK). Everything below is a plain system call wrapper, and the
    // steps are called in the cloned child, as they require.
    unsafe {
        let plan = &*(arg as *const ChildPlan);
        reset_signal_dispositions();
        set_up(plan);
        switch_user(plan);
        arm_death_signal(plan);
        own_fd_table(plan);
        redirect(plan);
        exec(plan)
    }
}

/// Default dispositions for every signal (the handler table is this child's own copy:
/// no CLONE_SIGHAND). SIGKILL and SIGSTOP refuse, which is fine.
///
/// SAFETY (for the caller): only to be called in the cloned child.
unsafe fn reset_signal_dispositions() {
    let mut dfl: libc::sigaction = std::mem::zeroed();
    dfl.sa_sigaction = libc::SIG_DFL;
    for sig in 1..65 {
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
    }
}

/// A process group of its own, the umask, the cgroup, the limits and the niceness:
/// everything set up while the child still has the spawner's privileges.
///
/// SAFETY (for the caller): only to be called in the cloned child.
unsafe fn set_up(plan: &ChildPlan) {
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
}

/// Switch to the job's user, if it has one.
///
/// SAFETY (for the caller): only to be called in the cloned child.
unsafe fn switch_user(plan: &ChildPlan) {
    // Groups, then gid, then uid (after it, no more privilege to change the others).
    // Raw system calls: see the `spawn` module's comment on glibc's wrappers.
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
}

/// The death signal, once the parent is known to be alive.
///
/// SAFETY (for the caller): only to be called in the cloned child.
unsafe fn arm_death_signal(plan: &ChildPlan) {
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
}

/// A descriptor table of the child's own, when it was cloned sharing the parent's: a
/// copy of the few descriptors below `unshare_from` alone (the kernel copies no more
/// when the range closed reaches the top), where a copy of the whole table at `clone`
/// and closing it at `exec` cost ~45 µs of CPU at 1,000 descriptors. Until then the
/// child changed no descriptor: the table is the parent's.
///
/// SAFETY (for the caller): only to be called in the cloned child.
unsafe fn own_fd_table(plan: &ChildPlan) {
    if plan.unshare_from <= 2 {
        return;
    }
    if libc::syscall(
        libc::SYS_close_range,
        plan.unshare_from as libc::c_uint,
        libc::c_uint::MAX,
        libc::CLOSE_RANGE_UNSHARE as libc::c_uint,
    ) != 0
    {
        fail(plan, STEP_UNSHARE, last_errno());
    }
}

/// Stdin and the output onto fds 0-2, nothing else across `exec`, and the working
/// directory.
///
/// SAFETY (for the caller): only to be called in the cloned child.
unsafe fn redirect(plan: &ChildPlan) {
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
}

/// Unblock every signal and `execve` the program; never returns.
///
/// SAFETY (for the caller): only to be called in the cloned child.
unsafe fn exec(plan: &ChildPlan) -> ! {
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
