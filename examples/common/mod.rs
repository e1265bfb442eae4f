//! What the benchmark examples share: CPU time and wall time as they measure them, and
//! the jobs they queue.

use nix::sys::resource::{getrusage, UsageWho};
use supervisor_store::NewJob;

/// `n` jobs of `/bin/true` naming group `g`.
pub fn true_jobs(n: u64) -> Vec<NewJob> {
    (0..n)
        .map(|_| NewJob {
            command: vec!["/bin/true".into()],
            group: Some("g".into()),
            ..Default::default()
        })
        .collect()
}

/// User + system CPU seconds of `who`.
pub fn cpu(who: UsageWho) -> f64 {
    let u = getrusage(who).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

/// Wall-clock seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}
