//! The integration-test harness: a sandbox per test (temp dir + config), the real
//! binary, waits on conditions with deadlines (never a bare sleep), and cleanup that
//! kills what is left and checks that no process the events file named survives.

#![allow(dead_code)]

pub mod http;
pub mod proxy;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A group named `name` with `workers` workers and quick, jitter-free backoffs (retries
/// after 0.05 s to 0.1 s, restarts after 0.05 s to 0.1 s, at most 10 a minute), so that
/// tests wait on conditions, not on delays. Tests change what they need of it.
pub fn group(name: &str, workers: u32) -> Value {
    json!({
        "name": name,
        "max_workers": workers,
        "retry_backoff": {"initial_s": 0.05, "max_s": 0.1, "jitter": 0},
        "restart": {
            "backoff": {"initial_s": 0.05, "max_s": 0.1, "jitter": 0},
            "max_restarts": 10,
            "period_s": 60,
        },
    })
}

/// A config of just these groups (every other key at its default).
pub fn config_of(groups: Vec<Value>) -> Value {
    json!({ "groups": groups })
}

/// The fields of `job --json` (and of each job of `jobs --json`) the contract names.
pub const JOB_FIELDS: [&str; 11] = [
    "id",
    "state",
    "group",
    "command",
    "attempts",
    "exit_code",
    "signal",
    "log",
    "created_at",
    "started_at",
    "finished_at",
];

/// An event's `seq`.
pub fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().expect("every event has a seq")
}

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_supervisor"))
}

/// A test's own directory and config.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox whose `supervisor.json` is `config`.
    pub fn new(config: &Value) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("sv-test-")
            .tempdir()
            .unwrap();
        let sb = Sandbox { dir };
        sb.write_config(config);
        sb
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("supervisor.json")
    }

    pub fn write_config(&self, config: &Value) {
        let tmp = self.path().join("supervisor.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        fs::rename(tmp, self.config_path()).unwrap();
    }

    pub fn events_path(&self) -> PathBuf {
        self.path().join("state/events.jsonl")
    }

    /// A command for the binary with `-c` set, run in the sandbox.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.path());
        if let Some((verb, rest)) = args.split_first() {
            cmd.arg(verb).arg("-c").arg(self.config_path()).args(rest);
        }
        cmd.env_remove("SUPERVISOR_CONFIG");
        cmd
    }

    /// Run a short command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// `submit ... -- cmd`: the new job's id.
    pub fn submit(&self, args: &[&str]) -> i64 {
        let mut full = vec!["submit"];
        full.extend_from_slice(args);
        let out = self.run(&full);
        assert!(
            out.status.success(),
            "submit {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// `job ID --json`.
    pub fn job(&self, id: i64) -> Value {
        let out = self.run(&["job", &id.to_string(), "--json"]);
        assert!(
            out.status.success(),
            "job {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Wait until job `id` is in one of `states`.
    pub fn wait_job(&self, id: i64, states: &[&str], within: Duration) -> Value {
        let mut last = Value::Null;
        wait_until(within, || {
            last = self.job(id);
            states.contains(&last["state"].as_str().unwrap_or(""))
        })
        .unwrap_or_else(|_| panic!("job {id} never reached {states:?}; last: {last}"));
        last
    }

    /// Every event in the current events file.
    pub fn events(&self) -> Vec<Value> {
        read_events(&self.events_path())
    }

    /// Start `supervisor run` (with extra args) in the background.
    pub fn start(&self, extra: &[&str]) -> Supervisor {
        self.start_with_env(extra, &[])
    }

    /// [`Sandbox::start`] with extra environment variables for the supervisor.
    pub fn start_with_env(&self, extra: &[&str], env: &[(&str, &Path)]) -> Supervisor {
        let stderr = fs::File::create(self.path().join("supervisor.stderr")).unwrap();
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        let mut cmd = self.command(&args);
        cmd.envs(env.iter().copied());
        let sv = spawn_supervisor(&mut cmd, stderr, self.events_path(), self.path());
        sv.wait_event(Duration::from_secs(10), |e| {
            e["event"] == "supervisor_started"
        });
        sv
    }
}

/// Start `cmd` (a `supervisor run`) as a [`Supervisor`] whose events are `events` and
/// whose sandbox is `dir`, its stderr into `stderr`, logging at `info`.
pub fn spawn_supervisor(
    cmd: &mut Command,
    stderr: fs::File,
    events: PathBuf,
    dir: &Path,
) -> Supervisor {
    let child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Supervisor {
        child: Some(child),
        events,
        dir: dir.to_path_buf(),
    }
}

/// Read an events file, skipping a torn last line.
pub fn read_events(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Poll `cond` until it holds or `within` passes: a wait on a condition with a
/// deadline, the only way tests here synchronise.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            state != Some('Z') && state != Some('X')
        }
        Err(_) => false,
    }
}

/// Every pid the events file names (children, jobs' workers).
pub fn pids_named(events: &[Value]) -> Vec<u32> {
    let mut pids: Vec<u32> = events
        .iter()
        .flat_map(|e| {
            let mut v = vec![];
            for k in ["pid", "worker_pid", "supervisor_pid"] {
                if let Some(p) = e[k].as_u64() {
                    v.push(p as u32);
                }
            }
            if let Some(cs) = e["children"].as_array() {
                v.extend(
                    cs.iter()
                        .filter_map(|c| c["pid"].as_u64())
                        .map(|p| p as u32),
                );
            }
            v
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Direct children of `pid` that are zombies.
pub fn zombie_children(pid: u32) -> Vec<u32> {
    let mut out = vec![];
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let rest = stat.rsplit(')').next().unwrap_or("");
        let mut f = rest.split_whitespace();
        let state = f.next();
        let ppid: u32 = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        if ppid == pid && state == Some("Z") {
            out.push(p);
        }
    }
    out
}

/// A running `supervisor run`; killed (and checked for leftovers) on drop.
pub struct Supervisor {
    pub child: Option<Child>,
    pub events: PathBuf,
    pub dir: PathBuf,
}

impl Supervisor {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    pub fn events(&self) -> Vec<Value> {
        read_events(&self.events)
    }

    /// Wait for the first event (in the current file) that satisfies `pred`.
    pub fn wait_event(&self, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        let ok = wait_until(within, || {
            found = self.events().into_iter().find(|e| pred(e));
            found.is_some()
        });
        if ok.is_err() {
            panic!("no such event within {within:?}; events:\n{}", self.dump());
        }
        found.unwrap()
    }

    /// Wait until `n` events satisfy `pred`; returns them.
    pub fn wait_events(
        &self,
        within: Duration,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let mut found = vec![];
        if wait_until(within, || {
            found = self.events().into_iter().filter(|e| pred(e)).collect();
            found.len() >= n
        })
        .is_err()
        {
            panic!(
                "only {} of {n} events within {within:?}; events:\n{}",
                found.len(),
                self.dump()
            );
        }
        found
    }

    /// Wait for the supervisor to exit; its exit code (or panic past the deadline).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let mut status = None;
        if wait_until(within, || {
            status = child.try_wait().unwrap();
            status.is_some()
        })
        .is_err()
        {
            panic!(
                "supervisor did not exit within {within:?}; events:\n{}",
                self.dump()
            );
        }
        status.unwrap().code()
    }

    /// The events file and stderr, for failure messages.
    pub fn dump(&self) -> String {
        let ev = fs::read_to_string(&self.events).unwrap_or_default();
        let err = fs::read_to_string(self.dir.join("supervisor.stderr")).unwrap_or_default();
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{ev}\n--- stderr (tail) ---\n{}", tail.join("\n"))
    }

    /// Assert that no process the events file ever named is still alive.
    pub fn assert_nothing_left(&self, within: Duration) {
        let pids = pids_named(&self.events());
        let mut left = vec![];
        let ok = wait_until(within, || {
            left = pids.iter().copied().filter(|&p| alive(p)).collect();
            left.is_empty()
        });
        assert!(
            ok.is_ok(),
            "processes left behind: {left:?}\n{}",
            self.dump()
        );
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Children die with the supervisor (PR_SET_PDEATHSIG), jobs with their workers.
        let pids = pids_named(&read_events(&self.events));
        let ok = wait_until(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p)));
        if ok.is_err() {
            for &p in &pids {
                if alive(p) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if !std::thread::panicking() {
                panic!("processes outlived the supervisor: {pids:?}");
            }
        }
    }
}

/// A job that writes its shell's pid to a file, then waits until the test releases it
/// (a file appears) and exits with the code the test gave.
pub struct Held {
    pub id: i64,
    pid_file: PathBuf,
    go: PathBuf,
}

impl Held {
    /// The job's pid, once it has written it and is alive.
    pub fn pid(&self) -> u32 {
        let mut pid = None;
        wait_until(Duration::from_secs(10), || {
            pid = fs::read_to_string(&self.pid_file)
                .ok()
                .filter(|s| s.ends_with('\n'))
                .and_then(|s| s.trim().parse::<u32>().ok());
            pid.is_some_and(alive)
        })
        .unwrap_or_else(|_| panic!("held job {} never wrote a live pid", self.id));
        pid.unwrap()
    }

    /// Let the job exit with `code`.
    pub fn release_with(&self, code: i32) {
        let tmp = self.go.with_extension("tmp");
        fs::write(&tmp, format!("{code}\n")).unwrap();
        fs::rename(tmp, &self.go).unwrap();
    }

    /// Let the job exit 0.
    pub fn release(&self) {
        self.release_with(0);
    }
}

impl Sandbox {
    /// Submit a held job (see [`Held`]) with the extra submit flags `args`; `name` must
    /// be unique in the sandbox.
    pub fn submit_held(&self, name: &str, args: &[&str]) -> Held {
        let pid_file = self.path().join(format!("{name}.pid"));
        let go = self.path().join(format!("{name}.go"));
        let script = format!(
            "echo $$ > {pid}; while [ ! -s {go} ]; do sleep 0.05; done; exit $(cat {go})",
            pid = pid_file.display(),
            go = go.display()
        );
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--", "sh", "-c", &script]);
        let id = self.submit(&full);
        Held { id, pid_file, go }
    }

    /// `status --json`, which must exit 0.
    pub fn status_json(&self) -> Value {
        let out = self.run(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status --json exited {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Supervisor {
    /// The highest `seq` in the current events file (0 if it is empty).
    pub fn last_seq(&self) -> u64 {
        self.events()
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .max()
            .unwrap_or(0)
    }

    /// Wait for the first event after `seq` that satisfies `pred`.
    pub fn wait_event_after(
        &self,
        seq: u64,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_event(within, |e| {
            e["seq"].as_u64().is_some_and(|s| s > seq) && pred(e)
        })
    }

    /// Stop with SIGTERM; expect exit 0 and nothing left behind.
    pub fn stop_cleanly(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(
            self.wait_exit(Duration::from_secs(10)),
            Some(0),
            "{}",
            self.dump()
        );
        self.assert_nothing_left(Duration::from_secs(2));
    }
}

impl Supervisor {
    /// Wait for this process's own `supervisor_started` (a second run on the same state
    /// dir finds the first run's events until it rotates them).
    pub fn wait_started(&self) {
        let pid = self.pid();
        self.wait_event(Duration::from_secs(10), |e| {
            e["event"] == "supervisor_started" && e["pid"] == pid
        });
    }
}
