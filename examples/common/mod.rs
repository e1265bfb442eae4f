//! What the benchmark examples share: CPU time and wall time as they measure them.

use nix::sys::resource::{getrusage, UsageWho};

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
