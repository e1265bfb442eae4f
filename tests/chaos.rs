//! Chaos: a few hundred jobs across three groups (routed by name and by tags) while a
//! seeded random schedule of faults hits the supervisor: SIGKILL of workers, of the
//! grabber and of the supervisor itself (then `run` again on the same state dir),
//! SIGSTOP/SIGCONT of workers (long enough for the heartbeat to kill them, or not),
//! SIGHUP reloads that resize the pools and add a route, graceful SIGTERM stops followed
//! by a restart, cancels, and keyed jobs submitted again. A last `run --until-empty`
//! finishes the work; then the contract's invariants are checked against the job store,
//! every events file, and a log the jobs write themselves.
//!
//! The seed (`SUPERVISOR_CHAOS_SEED`, decimal or 0x-hex; a fixed default) decides every
//! choice the test makes: the jobs, the faults, their order, the pauses, the victims
//! (by rank among the live ones). The OS's timing is not replayable, so every check
//! holds for any timing: a failure prints the seed and keeps a copy of the sandbox.
//!
//! The jobs are `bash` scripts that fork nothing (builtins only: `read -t` on a FIFO
//! to wait, `$EPOCHREALTIME` for time), so every process of an attempt is the job's own
//! shell. Each attempt appends to a shared log `S` (start), a `T` line every 20 ms and
//! `E` (end, with its exit code), each with the job id, `$SUPERVISOR_ATTEMPT`, its pid
//! and its time: two runs of one job overlap if one writes a line after the other's
//! start, and a run that starts after the job's outcome was stored is a rerun of a
//! finished job. (Jobs that fork are left to `sigkill_of_the_supervisor_leaves_no_job_
//! process_behind` below: their children are what a SIGKILL of the supervisor leaks.)
//!
//! The invariants: every job ends `succeeded`, `dead` or `canceled` (only the two that
//! no group takes stay `queued`, untouched), as its kind and its cancels allow; the
//! store's `attempts` matches the events (one `job_finished` per attempt, in order, the
//! last one matching the stored state, exit code and signal; a stored outcome may lack
//! its event only across a SIGKILL of the supervisor, which stores first); at most one
//! success is recorded, and it is a run of that attempt that exited 0; no two runs of a
//! job overlap, none starts after the job finished or was canceled; a worker runs one
//! job at a time; jobs run in their group, `arch=riscv64` ones only after the reload
//! that routed them; keys give the live job's id; `seq` rises by one across every file
//! of every run, each file opening with a snapshot; after each supervisor exits, no
//! process it started (children, jobs) is left, nor any zombie while it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(10);
/// The seed when `SUPERVISOR_CHAOS_SEED` is not set.
const DEFAULT_SEED: u64 = 0x5EED_C4A0_5001;
/// Every group's `max_attempts`: enough that lost attempts alone never kill a job.
const GROUP_MAX_ATTEMPTS: u32 = 8;

/// The job: `bash job.sh KIND TICKS` (see the module docs). `@FIFO@`, `@RUNS@` and
/// `@MARKS@` are replaced by paths in the sandbox.
const JOB_SH: &str = r#"exec 9<>'@FIFO@' 8>>'@RUNS@'
j=$SUPERVISOR_JOB_ID a=$SUPERVISOR_ATTEMPT
echo "S $j $a $$ $EPOCHREALTIME" >&8
tick() {
  local n=$1
  while [ "$n" -gt 0 ]; do
    read -r -t 0.02 -u 9
    echo "T $j $a $$ $EPOCHREALTIME" >&8
    n=$((n - 1))
  done
}
end() { echo "E $j $a $$ $EPOCHREALTIME $1" >&8; exit "$1"; }
case $1 in
  ok) tick "$2"; end 0 ;;
  flaky) if [ -e '@MARKS@'/"$j" ]; then tick "$2"; end 0; fi; : > '@MARKS@'/"$j"; tick 1; end 3 ;;
  slow) if [ -e '@MARKS@'/"$j" ]; then tick "$2"; end 0; fi; : > '@MARKS@'/"$j"; tick 250; end 0 ;;
  doomed) tick "$2"; end 4 ;;
  hopeless) tick 250; end 5 ;;
  *) end 99 ;;
esac
"#;

// ----- randomness ----------------------------------------------------------------------

/// SplitMix64: the tests take no `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below((hi - lo + 1) as usize) as u32
    }

    fn weighted<X: Copy>(&mut self, items: &[(u32, X)]) -> X {
        let total: u32 = items.iter().map(|(w, _)| w).sum();
        let mut r = self.below(total as usize) as u32;
        for &(w, x) in items {
            if r < w {
                return x;
            }
            r -= w;
        }
        unreachable!("weights add up")
    }

    fn shuffle<X>(&mut self, v: &mut [X]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

fn seed_from_env() -> u64 {
    match std::env::var("SUPERVISOR_CHAOS_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("SUPERVISOR_CHAOS_SEED={s:?}: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ----- jobs ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Exits 0 after its ticks.
    Ok,
    /// Fails (exit 3) the first time it runs, succeeds after (a marker file per job).
    Flaky,
    /// Outlives its 1 s timeout the first time it runs, is quick after.
    Slow,
    /// Always exits 4; two attempts: dead.
    Doomed,
    /// Always outlives its 0.5 s timeout; one attempt: dead.
    Hopeless,
    /// Runs 2.5 s, then exits 0: a target for cancels.
    Long,
}

/// How a job is routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// `tags: {arch: A}`.
    Arch(&'static str),
    /// `group: G`.
    Named(&'static str),
    /// `group: G` and `tags: {arch: A}`: the name wins.
    NamedArch(&'static str, &'static str),
}

#[derive(Clone, Debug)]
struct JobSpec {
    kind: Kind,
    ticks: u32,
    route: Route,
    key: Option<String>,
}

impl JobSpec {
    fn arch(&self) -> Option<&'static str> {
        match self.route {
            Route::Arch(a) | Route::NamedArch(_, a) => Some(a),
            Route::Named(_) => None,
        }
    }

    fn named(&self) -> Option<&'static str> {
        match self.route {
            Route::Named(g) | Route::NamedArch(g, _) => Some(g),
            Route::Arch(_) => None,
        }
    }

    /// The group the contract routes it to (`riscv64` once the reload added it; `mips`
    /// never).
    fn expected_group(&self) -> Option<&'static str> {
        if let Some(g) = self.named() {
            return Some(g);
        }
        match self.arch() {
            Some("x86_64" | "i386") => Some("build"),
            Some("aarch64" | "riscv64") => Some("test"),
            _ => None,
        }
    }

    fn is_late(&self) -> bool {
        self.route == Route::Arch("riscv64")
    }

    fn max_attempts(&self) -> Option<u32> {
        match self.kind {
            Kind::Doomed => Some(2),
            Kind::Hopeless => Some(1),
            _ => None,
        }
    }

    fn effective_max_attempts(&self) -> u32 {
        self.max_attempts().unwrap_or(GROUP_MAX_ATTEMPTS)
    }

    fn timeout_s(&self) -> Option<f64> {
        match self.kind {
            Kind::Slow => Some(1.0),
            Kind::Hopeless => Some(0.5),
            _ => None,
        }
    }

    fn script_args(&self) -> [String; 2] {
        let kind = match self.kind {
            Kind::Ok | Kind::Long => "ok",
            Kind::Flaky => "flaky",
            Kind::Slow => "slow",
            Kind::Doomed => "doomed",
            Kind::Hopeless => "hopeless",
        };
        [kind.to_string(), self.ticks.to_string()]
    }

    /// One line of a `submit --file`.
    fn line(&self, script: &Path) -> Value {
        let [kind, ticks] = self.script_args();
        let mut j = json!({"command": ["bash", script, kind, ticks]});
        if let Some(g) = self.named() {
            j["group"] = json!(g);
        }
        if let Some(a) = self.arch() {
            j["tags"] = json!({ "arch": a });
        }
        if let Some(n) = self.max_attempts() {
            j["max_attempts"] = json!(n);
        }
        if let Some(t) = self.timeout_s() {
            j["timeout_s"] = json!(t);
        }
        if let Some(k) = &self.key {
            j["key"] = json!(k);
        }
        j
    }

    /// The same job as `submit` arguments.
    fn cli_args(&self, script: &Path) -> Vec<String> {
        let mut a = vec![];
        if let Some(g) = self.named() {
            a.extend(["--group".to_string(), g.to_string()]);
        }
        if let Some(t) = self.arch() {
            a.extend(["--tag".to_string(), format!("arch={t}")]);
        }
        if let Some(n) = self.max_attempts() {
            a.extend(["--max-attempts".to_string(), n.to_string()]);
        }
        if let Some(t) = self.timeout_s() {
            a.extend(["--timeout".to_string(), t.to_string()]);
        }
        if let Some(k) = &self.key {
            a.extend(["--key".to_string(), k.clone()]);
        }
        a.extend(["--".to_string(), "bash".to_string()]);
        a.push(script.to_string_lossy().into_owned());
        a.extend(self.script_args());
        a
    }
}

fn random_route(rng: &mut Rng) -> Route {
    rng.weighted(&[
        (25, Route::Arch("x86_64")),
        (10, Route::Arch("i386")),
        (20, Route::Arch("aarch64")),
        (8, Route::Arch("riscv64")),
        (15, Route::Named("misc")),
        (5, Route::NamedArch("misc", "x86_64")),
        (8, Route::Named("build")),
        (7, Route::Named("test")),
    ])
}

fn random_job(rng: &mut Rng) -> JobSpec {
    let kind = rng.weighted(&[
        (64, Kind::Ok),
        (14, Kind::Flaky),
        (6, Kind::Slow),
        (6, Kind::Doomed),
        (3, Kind::Hopeless),
    ]);
    let ticks = match kind {
        Kind::Ok => rng.range(1, 6),
        Kind::Flaky => rng.range(1, 4),
        Kind::Slow => rng.range(1, 3),
        Kind::Doomed => rng.range(1, 2),
        Kind::Hopeless | Kind::Long => 0,
    };
    JobSpec {
        kind,
        ticks,
        route: random_route(rng),
        key: None,
    }
}

fn long_job(rng: &mut Rng) -> JobSpec {
    JobSpec {
        kind: Kind::Long,
        ticks: 125,
        route: random_route(rng),
        key: None,
    }
}

fn keyed_job(rng: &mut Rng, key: String) -> JobSpec {
    JobSpec {
        kind: Kind::Ok,
        ticks: 20,
        route: random_route(rng),
        key: Some(key),
    }
}

// ----- config ----------------------------------------------------------------------------

fn group(name: &str, workers: u32, arches: Option<&[&str]>) -> Value {
    let mut g = json!({
        "name": name,
        "max_workers": workers,
        "max_attempts": GROUP_MAX_ATTEMPTS,
        "job_timeout_s": 30,
        "retry_backoff": {"initial_s": 0.05, "max_s": 0.2, "jitter": 0},
        "restart": {
            "backoff": {"initial_s": 0.02, "max_s": 0.1, "jitter": 0},
            "max_restarts": 1000,
            "period_s": 60,
            "on_exhausted": "exit",
        },
    });
    if let Some(a) = arches {
        g["match"] = json!({ "arch": a });
    }
    g
}

/// Pools of build, test and misc; with `riscv`, `test` also takes `arch=riscv64`.
fn config(pools: [u32; 3], riscv: bool) -> Value {
    let test: &[&str] = if riscv {
        &["aarch64", "riscv64"]
    } else {
        &["aarch64"]
    };
    json!({
        "grabber": {
            "poll_interval_s": 0.2,
            "error_backoff": {"initial_s": 0.05, "max_s": 0.5, "jitter": 0},
        },
        "heartbeat": {"interval_s": 0.2, "timeout_s": 1.5},
        "shutdown_grace_s": 0.3,
        "events": {"keep": 200},
        "groups": [
            group("build", pools[0], Some(&["x86_64", "i386"])),
            group("test", pools[1], Some(test)),
            group("misc", pools[2], None),
        ],
    })
}

// ----- what the test observes ------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum CancelAnswer {
    /// Queued (or waiting for a retry): canceled at once.
    Canceled,
    /// Running: being stopped.
    Requested,
    AlreadyFinished(String),
}

#[derive(Clone, Debug)]
struct CancelRec {
    id: i64,
    answer: CancelAnswer,
    /// Wall times around the `cancel` command.
    t0: f64,
    t1: f64,
}

#[derive(Clone, Debug)]
struct KeyRec {
    id: i64,
    t0: f64,
    t1: f64,
}

/// One attempt's process as the jobs' shared log shows it.
#[derive(Clone, Debug)]
struct Run {
    attempt: u32,
    pid: u32,
    start: f64,
    /// Its last line's time.
    last: f64,
    exit: Option<i32>,
}

fn parse_ts(s: &str) -> f64 {
    s.replace(',', ".").parse().unwrap_or(f64::NAN)
}

/// The jobs' shared log: runs by job id, in the order they started.
fn read_runs(path: &Path) -> BTreeMap<i64, Vec<Run>> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut runs: BTreeMap<i64, Vec<Run>> = BTreeMap::new();
    let mut current: BTreeMap<(i64, u32), usize> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue; // a line torn by a kill
        }
        let (Ok(job), Ok(attempt), Ok(pid)) = (f[1].parse(), f[2].parse(), f[3].parse()) else {
            continue;
        };
        let ts = parse_ts(f[4]);
        let list = runs.entry(job).or_default();
        match f[0] {
            "S" => {
                current.insert((job, pid), list.len());
                list.push(Run {
                    attempt,
                    pid,
                    start: ts,
                    last: ts,
                    exit: None,
                });
            }
            "T" | "E" => {
                let Some(&i) = current.get(&(job, pid)) else {
                    continue;
                };
                let r = &mut list[i];
                r.last = r.last.max(ts);
                if f[0] == "E" {
                    r.exit = f.get(5).and_then(|c| c.parse().ok());
                }
            }
            _ => {}
        }
    }
    for list in runs.values_mut() {
        list.sort_by(|a, b| a.start.total_cmp(&b.start));
    }
    runs
}

/// Every events file, oldest first.
fn all_event_files(events: &Path) -> Vec<(PathBuf, Vec<Value>)> {
    let mut files = vec![];
    for n in (1..=200).rev() {
        let p = PathBuf::from(format!("{}.{n}", events.display()));
        if p.exists() {
            files.push(p);
        }
    }
    files.push(events.to_path_buf());
    files
        .into_iter()
        .map(|p| {
            let evs = read_events(&p);
            (p, evs)
        })
        .collect()
}

/// Live workers (group, slot, pid) of the run whose events these are, by (group, slot).
fn live_workers(events: &[Value]) -> Vec<(String, u64, u32)> {
    let mut m: BTreeMap<(String, u64), u32> = BTreeMap::new();
    for e in events {
        if e["role"] != "worker" {
            continue;
        }
        let key = (
            e["group"].as_str().unwrap_or("").to_string(),
            e["slot"].as_u64().unwrap_or(0),
        );
        let pid = e["pid"].as_u64().unwrap_or(0) as u32;
        match e["event"].as_str() {
            Some("child_ready") => {
                m.insert(key, pid);
            }
            Some("child_exited") if m.get(&key) == Some(&pid) => {
                m.remove(&key);
            }
            _ => {}
        }
    }
    m.into_iter()
        .filter(|(_, pid)| alive(*pid))
        .map(|((g, s), pid)| (g, s, pid))
        .collect()
}

/// Workers of the run whose events these are that have a job, with that job.
fn busy_workers(events: &[Value]) -> BTreeMap<u32, i64> {
    let mut worker_job: BTreeMap<u32, i64> = BTreeMap::new();
    for e in events {
        let pid = |k: &str| e[k].as_u64().unwrap_or(0) as u32;
        match e["event"].as_str() {
            Some("job_started") => {
                worker_job.insert(pid("worker_pid"), e["job_id"].as_i64().unwrap_or(-1));
            }
            Some("job_finished") => worker_job.retain(|_, j| *j != e["job_id"]),
            Some("child_exited") => {
                worker_job.remove(&pid("pid"));
            }
            _ => {}
        }
    }
    worker_job
}

/// The live grabber's pid, if it is ready.
fn live_grabber(events: &[Value]) -> Option<u32> {
    let mut pid = None;
    for e in events.iter().filter(|e| e["role"] == "grabber") {
        let p = e["pid"].as_u64().map(|p| p as u32);
        match e["event"].as_str() {
            Some("child_ready") => pid = p,
            Some("child_exited") if pid == p => pid = None,
            _ => {}
        }
    }
    pid.filter(|&p| alive(p))
}

/// Live processes whose environment carries `SUPERVISOR_CHAOS_TAG=tag`: the
/// supervisors this test started, their children and every job process.
fn tagged_processes(tag: &Path) -> Vec<u32> {
    let needle = format!("SUPERVISOR_CHAOS_TAG={}", tag.display()).into_bytes();
    let mut out = vec![];
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == needle.as_slice()) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn describe_pid(pid: u32) -> String {
    let cmd = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    format!("{pid} [{}] {cmd}", stat.trim())
}

fn signal_quiet(pid: u32, sig: Signal) {
    // The victim may have died on its own since it was picked.
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

// ----- the faults ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillWorker,
    KillGrabber,
    KillSupervisor,
    /// SIGSTOP a worker, then SIGCONT it: after the heartbeat killed it (`long`) or after
    /// 0.3 s (less than the heartbeat's timeout).
    StopWorker {
        long: bool,
    },
    Reload,
    GracefulRestart,
    Cancel,
    KeyAgain,
    /// Submit another wave of jobs.
    Wave(usize),
}

/// The schedule: one of each kind of fault at least, more of the common ones, shuffled,
/// with the later waves of jobs in between.
fn schedule(rng: &mut Rng) -> Vec<Fault> {
    let mut faults = vec![
        Fault::Reload,
        Fault::Reload,
        Fault::KillSupervisor,
        Fault::GracefulRestart,
        Fault::StopWorker { long: true },
        Fault::StopWorker { long: false },
        Fault::KillGrabber,
        Fault::KillWorker,
        Fault::KillWorker,
        Fault::KillWorker,
        Fault::Cancel,
        Fault::Cancel,
        Fault::KeyAgain,
    ];
    for _ in 0..12 {
        faults.push(rng.weighted(&[
            (30, Fault::KillWorker),
            (8, Fault::KillGrabber),
            (7, Fault::KillSupervisor),
            (6, Fault::StopWorker { long: true }),
            (6, Fault::StopWorker { long: false }),
            (12, Fault::Reload),
            (5, Fault::GracefulRestart),
            (14, Fault::Cancel),
            (8, Fault::KeyAgain),
        ]));
    }
    rng.shuffle(&mut faults);
    faults.insert(3, Fault::Wave(2));
    faults.insert(12, Fault::Wave(3));
    faults
}

// ----- the test's state ------------------------------------------------------------------

struct Chaos {
    seed: u64,
    /// Every choice but the victims': the jobs, the schedule, pauses, pools, targets.
    rng: Rng,
    /// The victims, by rank among the live workers: how many there are depends on the
    /// OS's timing, so these draws have a stream of their own and never shift the rest.
    victims: Rng,
    sb: Sandbox,
    script: PathBuf,
    runs_log: PathBuf,
    sv: Option<Supervisor>,
    /// Supervisors started so far.
    runs: u32,
    /// SIGKILLs of the supervisor.
    sv_kills: u32,
    /// Grabber kills in the current run (the grabber has the default restart policy: at
    /// most 5 restarts a minute).
    grabber_kills: u32,
    pools: [u32; 3],
    riscv: bool,
    generation: u64,
    /// The seq from which `arch=riscv64` is routed to `test`.
    riscv_since: Option<u64>,
    specs: BTreeMap<i64, JobSpec>,
    waves: BTreeMap<usize, Vec<i64>>,
    cancels: Vec<CancelRec>,
    keys: BTreeMap<String, Vec<KeyRec>>,
    next_key: u32,
    trace: Vec<String>,
    t0: Instant,
}

impl Chaos {
    fn new(seed: u64) -> Chaos {
        let pools = [3, 3, 2];
        let sb = Sandbox::new(&config(pools, false));
        let fifo = sb.path().join("tick.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let marks = sb.path().join("marks");
        fs::create_dir(&marks).unwrap();
        let runs_log = sb.path().join("runs.log");
        let script = sb.path().join("job.sh");
        let text = JOB_SH
            .replace("@FIFO@", &fifo.to_string_lossy())
            .replace("@RUNS@", &runs_log.to_string_lossy())
            .replace("@MARKS@", &marks.to_string_lossy());
        fs::write(&script, text).unwrap();
        Chaos {
            seed,
            rng: Rng(seed),
            victims: Rng(seed ^ 0xD1CE_D1CE_D1CE_D1CE),
            sb,
            script,
            runs_log,
            sv: None,
            runs: 0,
            sv_kills: 0,
            grabber_kills: 0,
            pools,
            riscv: false,
            generation: 0,
            riscv_since: None,
            specs: BTreeMap::new(),
            waves: BTreeMap::new(),
            cancels: vec![],
            keys: BTreeMap::new(),
            next_key: 0,
            trace: vec![],
            t0: Instant::now(),
        }
    }

    fn note(&mut self, what: String) {
        let line = format!("{:7.3}s {what}", self.t0.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        self.trace.push(line);
    }

    fn sv(&self) -> &Supervisor {
        self.sv.as_ref().expect("a supervisor runs")
    }

    fn tag(&self) -> PathBuf {
        self.sb.path().to_path_buf()
    }

    fn fail(&self, what: &str) -> ! {
        let dump = self.sv.as_ref().map(Supervisor::dump).unwrap_or_default();
        panic!(
            "chaos seed {}: {what}\ntrace:\n{}\n{dump}",
            self.seed,
            self.trace.join("\n")
        );
    }

    // ----- supervisors -------------------------------------------------------------

    fn start(&mut self, until_empty: bool) {
        assert!(self.sv.is_none());
        let extra: &[&str] = if until_empty { &["--until-empty"] } else { &[] };
        let tag = self.tag();
        let sv = self
            .sb
            .start_with_env(extra, &[("SUPERVISOR_CHAOS_TAG", tag.as_path())]);
        sv.wait_started();
        self.runs += 1;
        self.generation = 1;
        self.grabber_kills = 0;
        if self.riscv && self.riscv_since.is_none() {
            let pid = sv.pid();
            let started =
                sv.wait_event(T, |e| e["event"] == "supervisor_started" && e["pid"] == pid);
            self.riscv_since = Some(seq(&started));
        }
        let pid = sv.pid();
        self.sv = Some(sv);
        self.note(format!(
            "run {} started: pid {pid}{}, pools {:?}",
            self.runs,
            if until_empty { " (--until-empty)" } else { "" },
            self.pools
        ));
    }

    /// After the supervisor exited: nothing it started is left (children, jobs), then
    /// its stderr is kept aside.
    fn after_exit(&mut self) {
        let sv = self.sv.take().expect("a supervisor ran");
        sv.assert_nothing_left(Duration::from_secs(3));
        let tag = self.tag();
        let mut left = vec![];
        if wait_until(Duration::from_secs(3), || {
            left = tagged_processes(&tag);
            left.is_empty()
        })
        .is_err()
        {
            self.sv = Some(sv);
            let shown: Vec<String> = left.iter().map(|&p| describe_pid(p)).collect();
            self.fail(&format!(
                "processes of run {} outlived it:\n{}",
                self.runs,
                shown.join("\n")
            ));
        }
        drop(sv);
        let stderr = self.sb.path().join("supervisor.stderr");
        let _ = fs::rename(
            &stderr,
            self.sb
                .path()
                .join(format!("supervisor.stderr.{}", self.runs)),
        );
    }

    /// The supervisor is still running (it must never stop on its own here), and any
    /// zombie child it has is reaped soon.
    fn check_alive_and_reaping(&mut self) {
        let status = self.sv.as_mut().unwrap().child.as_mut().unwrap().try_wait();
        if let Ok(Some(status)) = status {
            self.fail(&format!("the supervisor exited on its own: {status}"));
        }
        let pid = self.sv().pid();
        let status = self.sb.status_json();
        if status["supervisor"]["running"] != true || status["supervisor"]["pid"] != pid {
            self.fail(&format!("status does not see supervisor {pid}: {status}"));
        }
        let zombies = zombie_children(pid);
        if !zombies.is_empty()
            && wait_until(Duration::from_secs(2), || {
                let now = zombie_children(pid);
                !zombies.iter().any(|z| now.contains(z))
            })
            .is_err()
        {
            self.fail(&format!("zombie children of the supervisor: {zombies:?}"));
        }
    }

    fn jobs(&self) -> Vec<Value> {
        let out = self.sb.run(&["jobs", "--json"]);
        assert!(
            out.status.success(),
            "jobs --json: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    // ----- jobs --------------------------------------------------------------------

    fn submit_file(&mut self, wave: usize, specs: Vec<JobSpec>) {
        let text: String = specs
            .iter()
            .map(|s| s.line(&self.script).to_string() + "\n")
            .collect();
        let path = self.sb.path().join(format!("wave{wave}.jsonl"));
        fs::write(&path, text).unwrap();
        let t0 = wall_now();
        let out = self.sb.run(&["submit", "--file", path.to_str().unwrap()]);
        let t1 = wall_now();
        assert!(
            out.status.success(),
            "submit --file: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(ids.len(), specs.len(), "one id a line");
        let mut by_key: BTreeMap<&str, i64> = BTreeMap::new();
        for (id, spec) in ids.iter().zip(&specs) {
            if let Some(k) = &spec.key {
                // The same key twice in one file: the same job.
                if let Some(first) = by_key.insert(k, *id) {
                    assert_eq!(first, *id, "key {k} twice in one file gave two jobs");
                }
                self.keys
                    .entry(k.clone())
                    .or_default()
                    .push(KeyRec { id: *id, t0, t1 });
            }
            self.specs.insert(*id, spec.clone());
        }
        self.waves.entry(wave).or_default().extend(&ids);
        let distinct: BTreeSet<i64> = ids.iter().copied().collect();
        self.note(format!(
            "wave {wave}: {} jobs submitted (ids {}..={})",
            distinct.len(),
            distinct.first().unwrap(),
            distinct.last().unwrap()
        ));
    }

    /// `submit` of one job with the CLI: its id.
    fn submit_cli(&mut self, spec: &JobSpec) -> i64 {
        let args = spec.cli_args(&self.script);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t0 = wall_now();
        let id = self.sb.submit(&args);
        let t1 = wall_now();
        if let Some(k) = &spec.key {
            self.keys
                .entry(k.clone())
                .or_default()
                .push(KeyRec { id, t0, t1 });
        }
        self.specs.entry(id).or_insert_with(|| spec.clone());
        id
    }

    fn wave(&mut self, wave: usize, n: usize, long: usize, keyed: usize) -> Vec<JobSpec> {
        let mut specs: Vec<JobSpec> = (0..n).map(|_| random_job(&mut self.rng)).collect();
        for _ in 0..long {
            let at = self.rng.below(specs.len());
            specs.insert(at, long_job(&mut self.rng));
        }
        for _ in 0..keyed {
            self.next_key += 1;
            let spec = keyed_job(&mut self.rng, format!("key-{wave}-{}", self.next_key));
            let at = self.rng.below(specs.len());
            specs.insert(at, spec.clone());
            // The same key again, further on in the same file.
            let at = self.rng.below(specs.len() + 1);
            specs.insert(at, spec);
        }
        specs
    }

    fn cancel(&mut self, id: i64) -> CancelAnswer {
        let t0 = wall_now();
        let out = self.sb.run(&["cancel", &id.to_string()]);
        let t1 = wall_now();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "cancel {id}: {:?} {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let answer = if stdout.contains("already finished") {
            let state = stdout.trim().rsplit(' ').next().unwrap_or("").to_string();
            CancelAnswer::AlreadyFinished(state)
        } else if stdout.contains("is running") {
            CancelAnswer::Requested
        } else if stdout.contains("canceled") {
            CancelAnswer::Canceled
        } else {
            panic!("cancel {id}: unexpected answer {stdout:?}");
        };
        self.cancels.push(CancelRec {
            id,
            answer: answer.clone(),
            t0,
            t1,
        });
        self.note(format!("cancel job {id}: {answer:?}"));
        answer
    }

    // ----- faults ------------------------------------------------------------------

    /// A live worker; most often one with a job, if there is one.
    fn pick_worker(&mut self) -> Option<(String, u64, u32)> {
        let events = self.sv().events();
        let mut workers = live_workers(&events);
        if workers.is_empty() {
            return None;
        }
        let busy = busy_workers(&events);
        if self.victims.below(4) > 0 && workers.iter().any(|w| busy.contains_key(&w.2)) {
            workers.retain(|w| busy.contains_key(&w.2));
        }
        let i = self.victims.below(workers.len());
        Some(workers[i].clone())
    }

    /// After worker `pid` died (its `child_exited` is out): its job's processes, every
    /// run of that job started before `before`, are gone too.
    fn job_died_with_worker(&mut self, exited: &Value, before: f64) {
        let Some(job) = exited["job_id"].as_i64() else {
            return;
        };
        let runs = read_runs(&self.runs_log);
        let pids: Vec<u32> = (runs.get(&job).into_iter().flatten())
            .filter(|r| r.start < before)
            .map(|r| r.pid)
            .collect();
        let mut left = vec![];
        if wait_until(Duration::from_secs(3), || {
            left = pids.iter().copied().filter(|&p| alive(p)).collect();
            left.is_empty()
        })
        .is_err()
        {
            let shown: Vec<String> = left.iter().map(|&p| describe_pid(p)).collect();
            self.fail(&format!(
                "job {job} outlived its dead worker ({exited}):\n{}",
                shown.join("\n")
            ));
        }
    }

    fn wait_exit_event(&mut self, pid: u32) -> Value {
        let mut found = None;
        let sv = self.sv();
        if wait_until(T, || {
            found = sv
                .events()
                .into_iter()
                .find(|e| e["event"] == "child_exited" && e["pid"] == pid);
            found.is_some()
        })
        .is_err()
        {
            self.fail(&format!("no child_exited for pid {pid} within {T:?}"));
        }
        found.unwrap()
    }

    fn apply(&mut self, fault: Fault) {
        match fault {
            Fault::KillWorker => {
                let Some((g, slot, pid)) = self.pick_worker() else {
                    self.note("kill worker: none is live".into());
                    return;
                };
                self.note(format!("SIGKILL worker {g}/{slot} pid {pid}"));
                let t = wall_now();
                signal_quiet(pid, Signal::SIGKILL);
                let exited = self.wait_exit_event(pid);
                self.job_died_with_worker(&exited, t);
            }
            Fault::KillGrabber => {
                if self.grabber_kills >= 2 {
                    return self.apply(Fault::KillWorker);
                }
                let Some(pid) = live_grabber(&self.sv().events()) else {
                    self.note("kill grabber: none is ready".into());
                    return;
                };
                self.grabber_kills += 1;
                self.note(format!("SIGKILL grabber pid {pid}"));
                signal_quiet(pid, Signal::SIGKILL);
                let exited = self.wait_exit_event(pid);
                // Its replacement, before anything else happens to this run.
                self.sv().wait_event_after(seq(&exited), T, |e| {
                    e["event"] == "child_ready" && e["role"] == "grabber"
                });
            }
            Fault::StopWorker { long } => {
                let Some((g, slot, pid)) = self.pick_worker() else {
                    self.note("stop worker: none is live".into());
                    return;
                };
                self.note(format!(
                    "SIGSTOP worker {g}/{slot} pid {pid} ({})",
                    if long {
                        "until the heartbeat kills it"
                    } else {
                        "0.3 s"
                    }
                ));
                signal_quiet(pid, Signal::SIGSTOP);
                if long {
                    let exited = self.wait_exit_event(pid);
                    if exited["signal"] != 9 {
                        self.fail(&format!("the stopped worker ended otherwise: {exited}"));
                    }
                    // Its job's next attempt comes a retry backoff (50 ms) after this.
                    let t = exited["ts"].as_f64().unwrap_or(0.0);
                    self.job_died_with_worker(&exited, t);
                } else {
                    std::thread::sleep(Duration::from_millis(300));
                }
                signal_quiet(pid, Signal::SIGCONT);
            }
            Fault::Reload => {
                let pools = [
                    self.rng.range(1, 4),
                    self.rng.range(1, 4),
                    self.rng.range(0, 3),
                ];
                let routing = !self.riscv;
                self.pools = pools;
                self.riscv = true;
                self.sb.write_config(&config(pools, true));
                let before = self.sv().last_seq();
                self.sv().signal(Signal::SIGHUP);
                self.generation += 1;
                let generation = self.generation;
                let loaded = self.sv().wait_event_after(before, T, |e| {
                    (e["event"] == "config_loaded" && e["generation"] == generation)
                        || e["event"] == "config_rejected"
                });
                if loaded["event"] != "config_loaded" {
                    self.fail(&format!("reload rejected: {loaded}"));
                }
                if routing {
                    self.riscv_since = Some(seq(&loaded));
                }
                self.note(format!(
                    "SIGHUP: pools {pools:?}{} (generation {generation})",
                    if routing { ", test takes riscv64" } else { "" }
                ));
            }
            Fault::KillSupervisor => {
                let pid = self.sv().pid();
                self.note(format!("SIGKILL supervisor pid {pid}"));
                self.sv().signal(Signal::SIGKILL);
                let code = self.sv.as_mut().unwrap().wait_exit(T);
                if code.is_some() {
                    self.fail(&format!("SIGKILLed supervisor exited with {code:?}"));
                }
                self.sv_kills += 1;
                self.after_exit();
                self.start(false);
            }
            Fault::GracefulRestart => {
                let pid = self.sv().pid();
                self.note(format!("SIGTERM supervisor pid {pid}"));
                self.sv().signal(Signal::SIGTERM);
                let code = self.sv.as_mut().unwrap().wait_exit(Duration::from_secs(15));
                if code != Some(0) {
                    self.fail(&format!("graceful stop exited with {code:?}"));
                }
                let last = self.sv().events().last().cloned().unwrap_or_default();
                if last["event"] != "supervisor_stopped" || last["code"] != 0 {
                    self.fail(&format!("a graceful stop's last event: {last}"));
                }
                self.after_exit();
                let running: Vec<i64> = self
                    .jobs()
                    .iter()
                    .filter(|j| j["state"] == "running")
                    .map(|j| j["id"].as_i64().unwrap())
                    .collect();
                if !running.is_empty() {
                    self.fail(&format!(
                        "jobs still running after a graceful stop: {running:?}"
                    ));
                }
                self.start(false);
            }
            Fault::Cancel => {
                let targeted: BTreeSet<i64> = self.cancels.iter().map(|c| c.id).collect();
                let long: Vec<i64> = (self.specs.iter())
                    .filter(|(id, s)| s.kind == Kind::Long && !targeted.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                let id = if !long.is_empty() && self.rng.below(10) < 7 {
                    long[self.rng.below(long.len())]
                } else {
                    let ids: Vec<i64> = (self.specs.iter())
                        .filter(|(id, s)| s.key.is_none() && !targeted.contains(id))
                        .map(|(id, _)| *id)
                        .collect();
                    ids[self.rng.below(ids.len())]
                };
                self.cancel(id);
            }
            Fault::KeyAgain => {
                let keys: Vec<String> = self.keys.keys().cloned().collect();
                let key = keys[self.rng.below(keys.len())].clone();
                let first = self.keys[&key][0].id;
                let spec = self.specs[&first].clone();
                let id = self.submit_cli(&spec);
                self.note(format!("submit key {key} again: job {id}"));
            }
            Fault::Wave(n) => {
                let specs = self.wave(n, 70, 3, 2);
                self.submit_file(n, specs);
            }
        }
    }
}

/// On a failure (or with `SUPERVISOR_CHAOS_KEEP` set): the seed, and a copy of the
/// sandbox to look at.
struct Replay {
    seed: u64,
    dir: PathBuf,
}

impl Drop for Replay {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if !failed && std::env::var_os("SUPERVISOR_CHAOS_KEEP").is_none() {
            return;
        }
        let keep = std::env::temp_dir().join(format!(
            "sv-chaos-seed-{}-{}",
            self.seed,
            std::process::id()
        ));
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&self.dir)
            .arg(&keep)
            .status()
            .is_ok_and(|s| s.success());
        eprintln!(
            "chaos: {} with seed {seed}; replay with SUPERVISOR_CHAOS_SEED={seed}{}",
            if failed { "FAILED" } else { "passed" },
            if copied {
                format!("; the sandbox is kept in {}", keep.display())
            } else {
                String::new()
            },
            seed = self.seed
        );
    }
}

// ----- the checks ------------------------------------------------------------------------

#[derive(Default)]
struct JobEvents {
    started: Vec<(u64, u32)>,
    /// (seq, attempt, outcome, event).
    finished: Vec<(u64, u32, String, Value)>,
    retries: Vec<u32>,
    dead: Vec<u32>,
}

/// What [`Chaos::verify_store`] counted, for the summary.
struct Tally {
    states: BTreeMap<String, usize>,
    outcomes: BTreeMap<String, usize>,
    reruns: usize,
    gaps: Vec<String>,
}

impl Chaos {
    /// Every invariant, checked once everything has stopped: the violations found, and
    /// a summary.
    fn verify(&self) -> (Vec<String>, String) {
        let mut v: Vec<String> = vec![];
        let events = self.verify_events_files(&mut v);
        let by_job = self.verify_one_job_per_worker(&events, &mut v);
        let store: BTreeMap<i64, Value> = self
            .jobs()
            .into_iter()
            .map(|j| (j["id"].as_i64().unwrap(), j))
            .collect();
        let Tally {
            states,
            outcomes,
            reruns,
            gaps,
        } = self.verify_store(&store, &events, &by_job, &mut v);
        self.verify_keys(&store, &mut v);
        let summary = format!(
            "{} jobs, states {states:?}; job_finished outcomes {outcomes:?}; {} runs of \
             the supervisor ({} SIGKILLed); {} cancels; {} successful runs \
             run again (at least once); {} outcome events lost to a SIGKILL",
            store.len(),
            self.runs,
            self.sv_kills,
            self.cancels.len(),
            reruns,
            gaps.len()
        );
        (v, summary)
    }

    /// The events files: each begins with a snapshot; seq rises by one across every
    /// file of every run. Returns every event, in order.
    fn verify_events_files(&self, v: &mut Vec<String>) -> Vec<Value> {
        let files = all_event_files(&self.sb.events_path());
        let mut events: Vec<Value> = vec![];
        for (path, evs) in &files {
            match evs.first() {
                None => v.push(format!("{} is empty", path.display())),
                Some(first) if first["event"] != "snapshot" => v.push(format!(
                    "{} does not begin with a snapshot: {first}",
                    path.display()
                )),
                Some(_) => {}
            }
            events.extend(evs.iter().cloned());
        }
        if let Some((i, e)) = (events.iter().enumerate()).find(|(i, e)| seq(e) != *i as u64 + 1) {
            v.push(format!(
                "seq is not continuous: event #{} has seq {} ({e}); files: {:?}",
                i + 1,
                seq(e),
                files.iter().map(|(p, e)| (p, e.len())).collect::<Vec<_>>()
            ));
        }
        let starts = count(&events, |e| e["event"] == "supervisor_started");
        if starts != self.runs as usize {
            v.push(format!(
                "{starts} supervisor_started events for {} runs",
                self.runs
            ));
        }
        events
    }

    /// One job per worker and one worker per job at a time; routing. Returns what the
    /// events say of each job.
    fn verify_one_job_per_worker(
        &self,
        events: &[Value],
        v: &mut Vec<String>,
    ) -> BTreeMap<i64, JobEvents> {
        let mut by_job: BTreeMap<i64, JobEvents> = BTreeMap::new();
        let mut worker_job: BTreeMap<u32, i64> = BTreeMap::new();
        let mut job_worker: BTreeMap<i64, u32> = BTreeMap::new();
        for e in events {
            let job = e["job_id"].as_i64();
            match e["event"].as_str().unwrap_or("") {
                "supervisor_started" => {
                    worker_job.clear();
                    job_worker.clear();
                }
                "child_exited" => {
                    if let Some(j) = worker_job.remove(&(e["pid"].as_u64().unwrap_or(0) as u32)) {
                        job_worker.remove(&j);
                    }
                }
                "job_started" => {
                    let j = job.unwrap_or(-1);
                    let w = e["worker_pid"].as_u64().unwrap_or(0) as u32;
                    let attempt = e["attempt"].as_u64().unwrap_or(0) as u32;
                    if let Some(other) = worker_job.get(&w) {
                        v.push(format!(
                            "worker {w} started job {j} while still running job {other}: {e}"
                        ));
                    }
                    if let Some(other) = job_worker.get(&j) {
                        v.push(format!(
                            "job {j} started on worker {w} while still on worker {other}: {e}"
                        ));
                    }
                    worker_job.insert(w, j);
                    job_worker.insert(j, w);
                    by_job.entry(j).or_default().started.push((seq(e), attempt));
                    if let Some(spec) = self.specs.get(&j) {
                        if e["group"].as_str() != spec.expected_group() {
                            v.push(format!(
                                "job {j} ({:?}) ran in group {} instead of {:?}",
                                spec.route,
                                e["group"],
                                spec.expected_group()
                            ));
                        }
                        if spec.is_late() && self.riscv_since.is_none_or(|s| seq(e) < s) {
                            v.push(format!(
                                "job {j} (arch=riscv64) started before a group took it \
                                 (from seq {:?}): {e}",
                                self.riscv_since
                            ));
                        }
                    }
                }
                "job_finished" => {
                    let j = job.unwrap_or(-1);
                    if let Some(w) = job_worker.remove(&j) {
                        worker_job.remove(&w);
                    }
                    let attempt = e["attempt"].as_u64().unwrap_or(0) as u32;
                    let outcome = e["outcome"].as_str().unwrap_or("").to_string();
                    match outcome.as_str() {
                        "succeeded" if e["exit_code"] != 0 => {
                            v.push(format!("a success without exit code 0: {e}"))
                        }
                        "succeeded" | "failed" | "timed_out" | "lost" | "canceled" => {}
                        _ => v.push(format!("unknown outcome: {e}")),
                    }
                    by_job.entry(j).or_default().finished.push((
                        seq(e),
                        attempt,
                        outcome,
                        e.clone(),
                    ));
                }
                "job_retry_scheduled" => by_job
                    .entry(job.unwrap_or(-1))
                    .or_default()
                    .retries
                    .push(e["attempt"].as_u64().unwrap_or(0) as u32),
                "job_dead" => by_job
                    .entry(job.unwrap_or(-1))
                    .or_default()
                    .dead
                    .push(e["attempts"].as_u64().unwrap_or(0) as u32),
                _ => {}
            }
        }
        by_job
    }

    /// The store, job by job, against the events and the jobs' own log.
    fn verify_store(
        &self,
        store: &BTreeMap<i64, Value>,
        events: &[Value],
        by_job: &BTreeMap<i64, JobEvents>,
        v: &mut Vec<String>,
    ) -> Tally {
        let stored: BTreeSet<i64> = store.keys().copied().collect();
        let submitted: BTreeSet<i64> = self.specs.keys().copied().collect();
        if stored != submitted {
            v.push(format!(
                "the store holds jobs {:?} never submitted and lacks {:?}",
                stored.difference(&submitted).collect::<Vec<_>>(),
                submitted.difference(&stored).collect::<Vec<_>>()
            ));
        }
        for j in by_job.keys() {
            if !store.contains_key(j) {
                v.push(format!("events about job {j}, which the store lacks"));
            }
        }
        let runs = read_runs(&self.runs_log);
        for j in runs.keys() {
            if !store.contains_key(j) {
                v.push(format!("job {j} ran but the store lacks it"));
            }
        }
        let empty = JobEvents::default();
        // Outcomes stored whose job_finished event is missing: only a SIGKILL of the
        // supervisor between the two (it stores first) may cause one, each at most one.
        let mut gaps: Vec<String> = vec![];
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        let mut reruns = 0;
        for (&id, job) in store {
            let Some(spec) = self.specs.get(&id) else {
                continue;
            };
            let state = job["state"].as_str().unwrap_or("?").to_string();
            *states.entry(state.clone()).or_default() += 1;
            let attempts = job["attempts"].as_u64().unwrap_or(0) as u32;
            let max = spec.effective_max_attempts();
            let ev = by_job.get(&id).unwrap_or(&empty);
            let job_runs: &[Run] = runs.get(&id).map(Vec::as_slice).unwrap_or(&[]);
            for f in &ev.finished {
                *outcomes.entry(f.2.clone()).or_default() += 1;
            }
            let cancels: Vec<&CancelRec> = self.cancels.iter().filter(|c| c.id == id).collect();
            let canceled_waiting = cancels.iter().any(|c| c.answer == CancelAnswer::Canceled);
            let requested = cancels.iter().any(|c| c.answer == CancelAnswer::Requested);
            let what = format!("job {id} ({:?}, {:?})", spec.kind, spec.route);
            let before = v.len();

            if spec.expected_group().is_none() {
                // No group ever takes it: it stays queued, untouched.
                if state != "queued" || attempts != 0 || !ev.started.is_empty() {
                    v.push(format!("{what}: no group takes it, yet it moved"));
                }
                if !job_runs.is_empty() {
                    v.push(format!("{what}: no group takes it, yet it ran"));
                }
                continue;
            }

            // Terminal: none stays queued or running.
            match state.as_str() {
                "succeeded" | "dead" | "canceled" => {}
                "failed" | "timed_out" if attempts >= max => {}
                _ => v.push(format!("{what}: ended {state}, not in a final state")),
            }
            if attempts > 0 && job["group"].as_str() != spec.expected_group() {
                v.push(format!("{what}: routed to {}", job["group"]));
            }
            if state == "canceled" && cancels.is_empty() {
                v.push(format!("{what}: canceled, but nobody canceled it"));
            }
            for c in &cancels {
                let done = job["finished_at"].as_f64().unwrap_or(f64::NAN);
                match &c.answer {
                    CancelAnswer::AlreadyFinished(s) if *s != state => {
                        v.push(format!("{what}: cancel found it finished {s}, now {state}"))
                    }
                    CancelAnswer::Canceled if !(c.t0..=c.t1).contains(&done) => v.push(format!(
                        "{what}: canceled at once by `cancel` at {:.3}..{:.3}, yet finished at \
                         {done:.3}",
                        c.t0, c.t1
                    )),
                    _ => {}
                }
            }

            // Events: one outcome per attempt, attempts in order, none beyond the store's.
            // An attempt cut short by a stop, or by its supervisor's death (told when the
            // next run takes it back), ends `lost` and runs again with the same number (it
            // was not used up).
            let mut seen = BTreeSet::new();
            let mut prev = 0;
            for (_, a, outcome, e) in &ev.finished {
                if e["reason"] == "its supervisor died while running it"
                    || e["reason"] == "the supervisor stopped before it ended"
                {
                    if outcome != "lost" && outcome != "canceled" {
                        v.push(format!("{what}: taken back, yet ended {outcome}: {e}"));
                    }
                    if *a == 0 || *a > attempts + 1 || *a <= prev {
                        v.push(format!(
                            "{what}: taken back as attempt {a}, after {prev}, the store \
                             counts {attempts}: {e}"
                        ));
                    }
                    continue;
                }
                if !seen.insert(*a) {
                    v.push(format!("{what}: attempt {a} finished twice: {e}"));
                }
                if *a <= prev {
                    v.push(format!("{what}: attempt {a} finished after attempt {prev}"));
                }
                prev = *a;
                if *a == 0 || *a > attempts {
                    v.push(format!(
                        "{what}: job_finished for attempt {a}, the store counts {attempts}: {e}"
                    ));
                }
                if outcome == "canceled" && cancels.is_empty() {
                    v.push(format!("{what}: an attempt ended canceled uncanceled: {e}"));
                }
            }
            let successes = ev.finished.iter().filter(|f| f.2 == "succeeded").count();
            if successes > 1 || (successes == 1 && state != "succeeded") {
                v.push(format!(
                    "{what}: {successes} succeeded job_finished events, store state {state}"
                ));
            }
            for a in 1..attempts {
                if !seen.contains(&a) {
                    gaps.push(format!("job {id} attempt {a}"));
                }
            }

            // The last attempt's event matches the store's final record.
            let last = ev.finished.last().filter(|f| f.1 == attempts);
            match (state.as_str(), last) {
                (_, Some((_, _, outcome, e))) => {
                    let retried = ev.retries.contains(&attempts);
                    let ok = match state.as_str() {
                        "succeeded" => outcome == "succeeded" && job["exit_code"] == 0,
                        "dead" => {
                            ["failed", "timed_out", "lost"].contains(&outcome.as_str())
                                && attempts >= max
                                && ev.dead.contains(&attempts)
                        }
                        "canceled" => {
                            outcome == "canceled"
                                || ((canceled_waiting || requested)
                                    && retried
                                    && ["failed", "timed_out", "lost"].contains(&outcome.as_str()))
                        }
                        other => outcome == other,
                    };
                    let same_end = outcome == "canceled"
                        || (state == "canceled" && (canceled_waiting || requested))
                        || (e["exit_code"] == job["exit_code"] && e["signal"] == job["signal"]);
                    if !ok || !same_end {
                        v.push(format!(
                            "{what}: the last attempt's job_finished does not match: {e}"
                        ));
                    }
                }
                ("canceled", None) if requested || (canceled_waiting && attempts == 0) => {}
                (_, None) if attempts == 0 => {
                    v.push(format!("{what}: {state} without ever running"));
                }
                (_, None) => gaps.push(format!("job {id} attempt {attempts} ({state})")),
            }

            // What each kind of job may do.
            let count_of = |o: &str| ev.finished.iter().filter(|f| f.2 == o).count();
            let targeted = !cancels.is_empty();
            match spec.kind {
                Kind::Ok | Kind::Long => {
                    if count_of("failed") + count_of("timed_out") > 0 {
                        v.push(format!("{what}: a job that exits 0 failed or timed out"));
                    }
                }
                Kind::Flaky => {
                    if count_of("failed") > 1 || count_of("timed_out") > 0 {
                        v.push(format!("{what}: more than its one failure"));
                    }
                    for f in ev.finished.iter().filter(|f| f.2 == "failed") {
                        if f.3["exit_code"] != 3 {
                            v.push(format!("{what}: failed otherwise than with 3: {}", f.3));
                        }
                    }
                }
                Kind::Slow => {
                    if count_of("timed_out") > 1 || count_of("failed") > 0 {
                        v.push(format!("{what}: more than its one timeout"));
                    }
                }
                Kind::Doomed => {
                    if count_of("succeeded") + count_of("timed_out") > 0 {
                        v.push(format!("{what}: a job that exits 4 succeeded or timed out"));
                    }
                    for f in ev.finished.iter().filter(|f| f.2 == "failed") {
                        if f.3["exit_code"] != 4 {
                            v.push(format!("{what}: failed otherwise than with 4: {}", f.3));
                        }
                    }
                }
                Kind::Hopeless => {
                    if count_of("succeeded") + count_of("failed") > 0 {
                        v.push(format!("{what}: a job that never ends succeeded or failed"));
                    }
                }
            }
            if !targeted {
                let expected = match spec.kind {
                    Kind::Doomed | Kind::Hopeless => "dead",
                    _ => "succeeded",
                };
                let all_lost = attempts >= max && ev.finished.iter().all(|f| f.2 == "lost");
                if state != expected && !(state == "dead" && all_lost) {
                    v.push(format!("{what}: ended {state}, expected {expected}"));
                }
                if state == "dead" && attempts != max {
                    v.push(format!("{what}: dead after {attempts} of {max} attempts"));
                }
            }

            // The jobs' own log. An attempt cut short by a stop or a dead supervisor is
            // given back: it runs again with the same number, unless the job is then
            // canceled, which leaves a run one past the store's count.
            let highest = attempts + u32::from(state == "canceled");
            for r in job_runs {
                if r.attempt == 0 || r.attempt > highest {
                    v.push(format!(
                        "{what}: a run saw SUPERVISOR_ATTEMPT={} (pid {}), the store counts \
                         {attempts}",
                        r.attempt, r.pid
                    ));
                }
            }
            let mut active: Option<&Run> = None;
            for r in job_runs {
                if let Some(a) = active {
                    if r.start <= a.last {
                        v.push(format!(
                            "{what}: two attempts at once: attempt {} (pid {}) started at \
                             {:.6} while attempt {} (pid {}) ran until at least {:.6}",
                            r.attempt, r.pid, r.start, a.attempt, a.pid, a.last
                        ));
                    }
                }
                if active.is_none_or(|a| r.last > a.last) {
                    active = Some(r);
                }
            }
            let completed = job_runs.iter().filter(|r| r.exit == Some(0)).count();
            if completed > 1 {
                reruns += completed - 1;
            }
            if state == "succeeded"
                && !job_runs
                    .iter()
                    .any(|r| r.exit == Some(0) && r.attempt == attempts)
            {
                v.push(format!(
                    "{what}: succeeded, but no run of attempt {attempts} exited 0: {job_runs:?}"
                ));
            }
            if state == "dead" && last.is_some_and(|f| f.2 == "failed") {
                let code = job["exit_code"].as_i64().map(|c| c as i32);
                if !job_runs
                    .iter()
                    .any(|r| r.exit == code && r.attempt == attempts)
                {
                    v.push(format!(
                        "{what}: dead with exit code {code:?}, but no run of attempt \
                         {attempts} exited so: {job_runs:?}"
                    ));
                }
            }
            if state == "succeeded" || state == "dead" {
                let done = job["finished_at"].as_f64().unwrap_or(f64::INFINITY);
                for r in job_runs.iter().filter(|r| r.start > done) {
                    v.push(format!(
                        "{what}: attempt {} (pid {}) started at {:.6}, after the job was \
                         {state} at {done:.6}",
                        r.attempt, r.pid, r.start
                    ));
                }
            }
            for c in &cancels {
                for r in job_runs.iter().filter(|r| r.start > c.t1) {
                    let allowed = c.answer == CancelAnswer::Requested && r.attempt == attempts;
                    if !allowed && !matches!(c.answer, CancelAnswer::AlreadyFinished(_)) {
                        v.push(format!(
                            "{what}: attempt {} (pid {}) started at {:.6}, after `cancel` \
                             answered {:?} at {:.6}",
                            r.attempt, r.pid, r.start, c.answer, c.t1
                        ));
                    }
                }
            }
            if v.len() > before {
                let evs: Vec<String> = (events.iter())
                    .filter(|e| e["job_id"] == id)
                    .map(Value::to_string)
                    .collect();
                v.push(format!(
                    "  job {id} in the store: {job}\n  its events:\n    {}\n  its runs: \
                     {job_runs:?}",
                    evs.join("\n    ")
                ));
            }
        }
        if gaps.len() > self.sv_kills as usize {
            v.push(format!(
                "{} stored outcomes lack their job_finished event, more than the {} \
                 SIGKILLs of the supervisor can explain: {gaps:?}",
                gaps.len(),
                self.sv_kills
            ));
        }
        Tally {
            states,
            outcomes,
            reruns,
            gaps,
        }
    }

    /// Keys: a key gives the live job's id, and a new job once it finished.
    fn verify_keys(&self, store: &BTreeMap<i64, Value>, v: &mut Vec<String>) {
        for (key, recs) in &self.keys {
            for w in recs.windows(2) {
                let (prev, cur) = (&w[0], &w[1]);
                let Some(pj) = store.get(&prev.id) else {
                    continue;
                };
                let done = pj["finished_at"].as_f64();
                if cur.id == prev.id {
                    if done.is_some_and(|d| d < cur.t0 - 0.5) && pj["state"] != "queued" {
                        v.push(format!(
                            "key {key}: submit at {:.3} returned job {}, finished at {done:?}",
                            cur.t0, cur.id
                        ));
                    }
                } else if cur.id < prev.id || done.is_none_or(|d| d > cur.t1) {
                    v.push(format!(
                        "key {key}: submit at {:.3}..{:.3} gave job {} while job {} \
                         (finished at {done:?}) was live",
                        cur.t0, cur.t1, cur.id, prev.id
                    ));
                }
            }
        }
    }
}

fn count(events: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    events.iter().filter(|e| pred(e)).count()
}

// ----- the test ----------------------------------------------------------------------------

#[test]
fn chaos_of_kills_stops_reloads_and_restarts_loses_no_job_and_runs_none_twice_at_once() {
    let seed = seed_from_env();
    eprintln!("chaos: seed {seed} (SUPERVISOR_CHAOS_SEED={seed} replays its choices)");
    let mut c = Chaos::new(seed);
    let _replay = Replay {
        seed,
        dir: c.sb.path().to_path_buf(),
    };

    // Before any supervisor: the first wave, keyed jobs submitted twice, two jobs no
    // group takes, and a few cancels of jobs that are surely queued.
    let mut first = c.wave(1, 140, 4, 2);
    for arch in ["mips", "mips"] {
        let at = c.rng.below(first.len());
        let mut spec = random_job(&mut c.rng);
        spec.route = Route::Arch(arch);
        first.insert(at, spec);
    }
    c.submit_file(1, first);
    for _ in 0..3 {
        c.next_key += 1;
        let spec = keyed_job(&mut c.rng, format!("key-cli-{}", c.next_key));
        let a = c.submit_cli(&spec);
        let b = c.submit_cli(&spec);
        assert_eq!(a, b, "a key submitted twice while queued gave two jobs");
    }
    let wave1: Vec<i64> = c.waves[&1].clone();
    for _ in 0..3 {
        let id = wave1[c.rng.below(wave1.len())];
        if c.specs[&id].key.is_some() || c.cancels.iter().any(|x| x.id == id) {
            continue;
        }
        let answer = c.cancel(id);
        assert_eq!(answer, CancelAnswer::Canceled, "job {id} was queued");
    }

    c.start(false);
    let faults = schedule(&mut c.rng);
    c.note(format!("schedule: {faults:?}"));
    for fault in faults {
        let pause = c.rng.range(150, 450);
        std::thread::sleep(Duration::from_millis(pause as u64)); // progress, not sync
        c.check_alive_and_reaping();
        c.apply(fault);
    }
    c.check_alive_and_reaping();

    // Let everything finish: every group with workers again, a graceful stop, then a
    // last run until nothing runnable is left.
    c.pools = [3, 3, 3];
    c.riscv = true;
    c.sb.write_config(&config(c.pools, true));
    c.note("SIGTERM supervisor for the last run".into());
    c.sv().signal(Signal::SIGTERM);
    let code = c.sv.as_mut().unwrap().wait_exit(Duration::from_secs(15));
    if code != Some(0) {
        c.fail(&format!("graceful stop exited with {code:?}"));
    }
    c.after_exit();
    c.start(true);
    let code = c.sv.as_mut().unwrap().wait_exit(Duration::from_secs(40));
    if code != Some(0) {
        c.fail(&format!("run --until-empty exited with {code:?}"));
    }
    c.note("run --until-empty exited 0".into());
    let last = c.sv().events().last().cloned().unwrap_or_default();
    if last["event"] != "supervisor_stopped" || last["code"] != 0 {
        c.fail(&format!("the last run's last event: {last}"));
    }
    c.after_exit();

    let (violations, summary) = c.verify();
    c.note(summary.clone());
    if !violations.is_empty() {
        let shown: Vec<&String> = violations.iter().take(40).collect();
        panic!(
            "chaos seed {seed}: {} violations (replay with SUPERVISOR_CHAOS_SEED={seed}):\n{}\n\
             {summary}\ntrace:\n{}",
            violations.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            c.trace.join("\n")
        );
    }
}

/// Kills, on drop, the processes it names that are still alive (what a failing test
/// would otherwise leave running).
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &p in &self.0 {
            if alive(p) {
                signal_quiet(p, Signal::SIGKILL);
            }
        }
    }
}

/// What the chaos test's jobs cannot show (they fork nothing): a job's own child, in the
/// job's process group, must not outlive a SIGKILL of the supervisor either. When only
/// the worker dies, the supervisor kills the job's process group; when the supervisor
/// dies, its workers die at once (PDEATHSIG SIGKILL) and the job's shell too (its own
/// PDEATHSIG), but nothing kills the rest of the group: it is reparented to init and
/// runs on, alongside the next attempt of its job under the next supervisor.
#[test]
fn sigkill_of_the_supervisor_leaves_no_job_process_behind() {
    let sb = Sandbox::new(&config([1, 1, 1], false));
    let mut sv = sb.start(&[]);
    let bg = sb.path().join("bg.pid");
    let script = format!("sleep 30 & echo $! > {}; wait", bg.display());
    let id = sb.submit(&["--group", "misc", "--", "sh", "-c", &script]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == id);
    let mut child = None;
    wait_until(T, || {
        child = fs::read_to_string(&bg)
            .ok()
            .filter(|s| s.ends_with('\n'))
            .and_then(|s| s.trim().parse::<u32>().ok());
        child.is_some_and(alive)
    })
    .expect("the job's background child never wrote its pid");
    let child = child.unwrap();
    let _cleanup = KillOnDrop(vec![child]);

    sv.signal(Signal::SIGKILL);
    assert_eq!(sv.wait_exit(T), None, "killed by a signal");
    sv.assert_nothing_left(Duration::from_secs(2));
    let gone = wait_until(Duration::from_secs(3), || !alive(child));
    assert!(
        gone.is_ok(),
        "the job's background child outlived the supervisor's SIGKILL by 3 s: {}",
        describe_pid(child)
    );
}
