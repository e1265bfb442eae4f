//! The users and groups the config names (a group's `user` and `group`), looked up in the
//! system's databases when the config is loaded, each problem reported with its key
//! path like every other: an unknown name, a failed lookup, or a supervisor that is not
//! root and so could not switch to any user.

use std::collections::BTreeMap;

use serde_json::Value;
use supervisor_os::users::{self, LookupError};

use crate::validate::Problem;
use crate::RunAs;

/// The user of each group (by its index) that names one and could be resolved, and the
/// problems of those that could not. `euid` is the effective uid of the process the
/// config is for.
pub(crate) fn resolve(value: &Value, euid: u32) -> (BTreeMap<usize, RunAs>, Vec<Problem>) {
    let mut found = BTreeMap::new();
    let mut problems = Vec::new();
    let Some(groups) = value.get("groups").and_then(Value::as_array) else {
        return (found, problems);
    };
    for (i, group) in groups.iter().enumerate() {
        // Wrong types and empty names are the schema's to report.
        let Some(user) = group
            .get("user")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        else {
            continue;
        };
        let primary = group
            .get("group")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty());
        let before = problems.len();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                path: format!("groups[{i}].{key}"),
                message,
            })
        };
        let quoted = Value::String(user.to_string());
        if euid != 0 {
            problem(
                "user",
                format!(
                    "running jobs as {quoted} needs a supervisor running as root (this \
                     process runs as uid {euid})"
                ),
            );
        }
        let entry = match users::lookup_user(user) {
            Ok(Some(entry)) => Some(entry),
            Ok(None) => {
                problem("user", format!("no such user {quoted}"));
                None
            }
            Err(e) => {
                problem("user", lookup_failed("user", &quoted, &e));
                None
            }
        };
        let gid = match primary {
            None => entry.as_ref().map(|e| e.gid),
            Some(name) => {
                let quoted = Value::String(name.to_string());
                match users::lookup_group(name) {
                    Ok(Some(gid)) => Some(gid),
                    Ok(None) => {
                        problem("group", format!("no such group {quoted}"));
                        None
                    }
                    Err(e) => {
                        problem("group", lookup_failed("group", &quoted, &e));
                        None
                    }
                }
            }
        };
        let (Some(entry), Some(gid)) = (entry, gid) else {
            continue;
        };
        let groups = match users::group_list(&entry.name, gid) {
            Ok(groups) => groups,
            Err(e) => {
                problem(
                    "user",
                    format!("cannot list the groups of user {quoted}: {e}"),
                );
                continue;
            }
        };
        let Some(home) = entry.home.to_str().map(str::to_string) else {
            problem(
                "user",
                format!(
                    "the home directory of user {quoted} ({}) is not UTF-8",
                    entry.home.display()
                ),
            );
            continue;
        };
        if problems.len() == before {
            found.insert(
                i,
                RunAs {
                    user: entry.name,
                    uid: entry.uid,
                    gid,
                    groups,
                    home,
                },
            );
        }
    }
    (found, problems)
}

fn lookup_failed(kind: &str, quoted: &Value, e: &LookupError) -> String {
    match e {
        LookupError::BadName => format!("{quoted} is not a {kind} name: {e}"),
        LookupError::Failed(_) => format!("cannot look up {kind} {quoted}: {e}"),
    }
}
