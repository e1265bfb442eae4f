//! A PostgreSQL server of a test's own, for a test that kills it: the one
//! `scripts/with-postgres` starts serves every test running at the time. It is made by
//! `scripts/with-postgres --private DIR init` (the same binaries and user) in that
//! script's temporary directory, so that the script's cleanup stops and removes it even
//! when the test process dies before its own cleanup; it listens on a unix socket in DIR
//! only, with `synchronous_commit` on: a commit acknowledged before a SIGKILL survives it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::{alive, wait_until};

/// The variable in which `scripts/with-postgres` names its temporary directory.
pub const DIR_VAR: &str = "SUPERVISOR_TEST_POSTGRES_DIR";

/// A running (or killed) server; stopped and removed on drop.
pub struct PgServer {
    dir: PathBuf,
}

impl PgServer {
    /// Makes and starts a fresh server (initdb: a few seconds).
    pub fn new() -> PgServer {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let parent = std::env::var(DIR_VAR).unwrap_or_else(|_| {
            panic!("{DIR_VAR} is not set: run PostgreSQL tests through scripts/with-postgres")
        });
        let dir = Path::new(&parent).join(format!(
            "private-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let server = PgServer { dir };
        server.ctl("init");
        server
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "host={} port=5432 user=postgres dbname=postgres",
            self.dir.display()
        )
    }

    /// The postmaster's pid, from its lock file.
    pub fn postmaster(&self) -> u32 {
        let text = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .expect("the server's postmaster.pid");
        text.lines().next().unwrap().trim().parse().unwrap()
    }

    /// SIGKILL to the postmaster alone (as the OOM killer or `kill -9` does); returns
    /// once it and every process it had started are gone (its backends notice its death
    /// and exit), so that it can be started again.
    pub fn kill_postmaster(&self) {
        let pm = self.postmaster();
        let children = children_of(pm);
        assert!(!children.is_empty(), "a running server has processes");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pm as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // The next postmaster refuses to start while the pid in the lock file exists, even
        // as a zombie (init here reaps orphans every few seconds).
        wait_until(Duration::from_secs(30), || {
            !Path::new(&format!("/proc/{pm}")).exists() && children.iter().all(|&c| !alive(c))
        })
        .unwrap_or_else(|_| {
            let left: Vec<u32> = children.iter().copied().filter(|&c| alive(c)).collect();
            panic!("postmaster {pm} or its processes {left:?} still there 30 s after SIGKILL")
        });
    }

    /// Starts it again (after a kill: crash recovery); returns once it takes connections.
    pub fn start(&self) {
        self.ctl("start");
    }

    fn ctl(&self, what: &str) {
        let out = Command::new(script())
            .arg("--private")
            .arg(&self.dir)
            .arg(what)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "with-postgres --private {what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let out = Command::new(script())
            .arg("--private")
            .arg(&self.dir)
            .arg("stop")
            .output();
        if !out.is_ok_and(|o| o.status.success()) && !std::thread::panicking() {
            panic!("cannot stop the test's server in {}", self.dir.display());
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/with-postgres")
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}
