//! `supervisor check`: validate the config, print its summary, and warn of what it would
//! do that an operator may not mean.

use std::io::Write;
use std::path::Path;

use serde_json::Value;
use supervisor_config::Config;
use supervisor_os::{PidFile, PidFileState};

use super::{config, pidfile, CommandError};

/// `supervisor check`: the summary, and warnings on stderr (still exit 0) for what the
/// config would do that an operator may not mean (see [`check_warnings`]).
pub fn check(path: &Path) -> Result<(), CommandError> {
    let config = config::load(path)?;
    if let Some(http) = &config.http {
        // `run` would refuse to start with it.
        http.read_token()
            .map_err(|e| CommandError::Usage(format!("{}: {e}", config.path.display())))?;
    }
    say!("{}", config.summary())?;
    for warning in check_warnings(&config, supervisor_os::users::effective_uid()) {
        eprintln!("supervisor: warning: {warning}");
    }
    Ok(())
}

/// What `check` warns of: groups whose jobs would run as root (a supervisor running as
/// `euid` 0, a group without `user`), and cgroup limits that would not be enforced (no
/// delegated cgroup v2 for the running supervisor or, with none running, for `check`
/// itself, which a supervisor started the same way would share).
fn check_warnings(config: &Config, euid: u32) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(file) = config.http.as_ref().and_then(|h| h.token_file.as_ref()) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(file) {
            if meta.permissions().mode() & 0o077 != 0 {
                warnings.push(format!(
                    "http.token_file {} can be read by other users (mode {:03o}); chmod 600 it",
                    file.display(),
                    meta.permissions().mode() & 0o777
                ));
            }
        }
    }
    if euid == 0 {
        for (i, g) in config.groups.iter().enumerate() {
            if g.process.run_as.is_none() {
                warnings.push(format!(
                    "groups[{i}] ({}) has no `user`: its jobs would run as root",
                    Value::String(g.name.clone())
                ));
            }
        }
    }
    let limited: Vec<String> = config
        .groups
        .iter()
        .enumerate()
        .flat_map(|(i, g)| {
            let memory = g.process.memory_max_bytes.map(|_| "memory_max_bytes");
            let cpu = g.process.cpu_max.map(|_| "cpu_max");
            [memory, cpu]
                .into_iter()
                .flatten()
                .map(move |key| format!("groups[{i}].{key}"))
        })
        .collect();
    if limited.is_empty() {
        return warnings;
    }
    let (whose, found) = match PidFile::inspect(&pidfile(&config.state_dir)) {
        PidFileState::Running(pid) if pid > 0 => (
            format!("the running supervisor (pid {pid})"),
            supervisor_os::cgroup::detect_pid(pid),
        ),
        _ => ("this process".to_string(), supervisor_os::cgroup::detect()),
    };
    if let Err(why) = found {
        warnings.push(format!(
            "{} will not be enforced: cgroups are not in use for {whose}: {why}",
            limited.join(", ")
        ));
    }
    warnings
}
