//! The floor of dispatch, for `scripts/bench depth`: N spawn + exec + wait of
//! `/bin/true` with the project's own spawner on T threads, one job at a time each,
//! nothing stored and nothing reported. Prints jobs per second, and the CPU time per job
//! of this process and its jobs together (user + system).
//!
//!     cargo run --release --example spawn_floor -- 10000 4

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use supervisor_os::{wait_pid, JobCommand, Spawner};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let threads: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let left = AtomicU64::new(n);
    let env: Vec<_> = std::env::vars_os().collect();
    let argv = vec!["/bin/true".to_string()];
    let cpu = || {
        use nix::sys::resource::{getrusage, UsageWho};
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN]
            .into_iter()
            .map(|who| getrusage(who).expect("getrusage"))
            .map(|u| secs(u.user_time()) + secs(u.system_time()))
            .sum::<f64>()
    };
    let cpu0 = cpu();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (left, env, argv) = (&left, env.clone(), &argv);
            scope.spawn(move || {
                let devnull = File::open("/dev/null").expect("/dev/null");
                let out = File::create("/dev/null").expect("/dev/null");
                let mut spawner = Spawner::new();
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| x.checked_sub(1))
                    .is_ok()
                {
                    let cmd = JobCommand {
                        argv,
                        env: env.clone(),
                        cwd: None,
                        stdin: devnull.as_fd(),
                        output: out.as_fd(),
                        program: None,
                        death_signal: supervisor_os::Sig::SIGKILL,
                        umask: None,
                    };
                    let pid = spawner.spawn(&cmd).expect("spawn /bin/true");
                    wait_pid(pid).expect("wait");
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let per_job = (cpu() - cpu0) / n as f64 * 1e6;
    println!(
        "{:.0} jobs/s ({n} jobs on {threads} threads in {secs:.2} s; {per_job:.0} µs CPU per \
         job, spawner and jobs)",
        n as f64 / secs
    );
}
