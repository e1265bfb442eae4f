//! A process's descendants, from `/proc/<pid>/task/<tid>/children`: how a worker (a child
//! subreaper) finds every process its job left behind, however it detached (`setsid`,
//! double fork, a cleared environment), and how the supervisor finds what a dead worker's
//! job left to it.

use std::collections::BTreeSet;

/// The direct children of `pid`, from every one of its threads' lists (an orphan handed
/// to a subreaper is listed under one of its threads). Empty if `pid` is gone.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        // Bounded: only numbers that parse are kept.
        out.extend(
            text.split_ascii_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// Every descendant of `pid`, parents before their children. A process that forks or
/// ends while this runs may be missed: callers loop until nothing is left.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut next = children(pid);
    while let Some(p) = next.pop() {
        // A bound against a loop in what /proc says (a pid reused while we read).
        if p <= 1 || !seen.insert(p) || out.len() >= 100_000 {
            continue;
        }
        out.push(p);
        next.extend(children(p));
    }
    out
}

/// Reap every child that has ended, without blocking; true if any child is left (alive,
/// or stopped). One `waitpid` when there is none: cheap enough for after every job.
pub fn reap_leaving_any() -> bool {
    use nix::errno::Errno;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return false,
            Err(e) => {
                log::error!("waitpid: {e}");
                return true;
            }
        }
    }
}

/// Wait (blocking) until this process has no child left, reaping each as it ends.
pub fn reap_until_none() {
    use nix::errno::Errno;
    use nix::sys::wait::waitpid;
    use nix::unistd::Pid;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return,
            Err(e) => {
                log::error!("waitpid: {e}");
                return;
            }
        }
    }
}

/// SIGKILL every descendant of this process until none is left (a process forking
/// while it is killed may add one: look again), reaping what ends. Gives up after
/// `rounds` looks.
pub fn kill_descendants(rounds: u32) {
    sigkill_descendants(rounds, true);
}

/// SIGKILL every descendant of this process, looking again up to `rounds` times (a
/// process forking while it is killed may add one); with `reap`, reaping what ends
/// between looks. Without it, whoever waits for its children still learns how they
/// ended (a zombie is signalled again, harmlessly).
pub fn sigkill_descendants(rounds: u32, reap: bool) {
    let me = std::process::id();
    for _ in 0..rounds {
        let left = descendants(me);
        if left.is_empty() {
            return;
        }
        for pid in left {
            let _ = crate::signal_pid(pid, crate::Sig::SIGKILL);
        }
        if reap {
            reap_leaving_any();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn finds_a_grandchild_that_left_its_parent_s_session() {
        // sh starts a `setsid sleep` (a new session) and waits: the sleep is our
        // grandchild whatever its session.
        let mut sh = Command::new("sh")
            .args(["-c", "setsid sleep 30 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let sleep: u32 = line.trim().parse().unwrap();
        let me = std::process::id();
        let found = descendants(me);
        assert!(found.contains(&sh.id()), "{found:?}");
        assert!(found.contains(&sleep), "{found:?} lacks {sleep}");
        assert!(children(me).contains(&sh.id()));
        crate::signal_pid(sleep, crate::Sig::SIGKILL).unwrap();
        sh.wait().unwrap();
        assert!(!descendants(me).contains(&sleep));
    }
}
