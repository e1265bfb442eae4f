//! Least privilege, on the real binary: jobs run as their group's user with its limits,
//! other users are kept out of the state dir by its modes, and users or limits that
//! cannot be are config errors naming their key.
//!
//! Most of these need root and a `nobody` user (and `runuser` to act as `nobody`); each
//! says why it skips where the machine lacks one. Real cgroup enforcement needs a
//! delegated cgroup v2, which the test machines lack: there, the tests check that the
//! config is accepted, that `status` and `check` say the limits are not enforced, and
//! the cgroup logic is tested on a fake tree (`crates/os/src/cgroup.rs`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{bin, Sandbox};

const LONG: Duration = Duration::from_secs(20);

/// A config of `groups` (each given a single worker and one attempt), with quick
/// heartbeats.
fn config(groups: Vec<Value>) -> Value {
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|mut g| {
            g["max_workers"] = json!(1);
            g["max_attempts"] = json!(1);
            g
        })
        .collect();
    json!({
        "heartbeat": {"interval_s": 0.2, "timeout_s": 2},
        "shutdown_grace_s": 1,
        "groups": groups,
    })
}

/// Output of a system tool (the tests' oracle for users and groups), trimmed.
fn tool(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The `nobody` user, as the system's own tools see it.
struct Nobody {
    uid: String,
    groups: String,
    home: String,
}

/// `nobody`, when this test runs as root on a machine that has it; else why not, said.
fn root_and_nobody(test: &str) -> Option<Nobody> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped {test}: it needs root (running jobs as another user)");
        return None;
    }
    let Some(entry) = tool("getent", &["passwd", "nobody"]) else {
        eprintln!("skipped {test}: this machine has no user `nobody`");
        return None;
    };
    Some(Nobody {
        uid: tool("id", &["-u", "nobody"])?,
        groups: tool("id", &["-G", "nobody"])?,
        home: entry.split(':').nth(5).unwrap_or_default().to_string(),
    })
}

/// `runuser`, to act as `nobody`; else why not, said.
fn runuser(test: &str) -> Option<PathBuf> {
    let found = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        eprintln!("skipped {test}: no runuser here to act as another user");
    }
    found
}

/// Run `program args` as `nobody`.
fn as_nobody(runuser: &Path, program: &Path, args: &[&str]) -> Output {
    Command::new(runuser)
        .args(["-u", "nobody", "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("SUPERVISOR_CONFIG")
        .output()
        .unwrap()
}

/// Let other users into the sandbox (whatever the umask made of it), so that what keeps
/// them out of the state dir is the state dir's own mode.
fn open_to_others(sb: &Sandbox) {
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(sb.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// The binary, where `nobody` can run it: in place when it can, else a copy in a
/// `0755` folder (a target dir under a private home is out of its reach).
struct NobodyBin {
    path: PathBuf,
    _copy: Option<tempfile::TempDir>,
}

fn nobody_bin(runuser: &Path) -> NobodyBin {
    let reach = Command::new(runuser)
        .args(["-u", "nobody", "--", "test", "-x"])
        .arg(bin())
        .status()
        .unwrap();
    if reach.success() {
        return NobodyBin {
            path: bin(),
            _copy: None,
        };
    }
    let dir = tempfile::Builder::new()
        .prefix("sv-bin-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("supervisor");
    std::fs::copy(bin(), &path).unwrap();
    NobodyBin {
        path,
        _copy: Some(dir),
    }
}

fn log_of(sb: &Sandbox, id: i64) -> PathBuf {
    sb.path().join(format!("state/logs/{id}.log"))
}

fn read_log(sb: &Sandbox, id: i64) -> String {
    std::fs::read_to_string(log_of(sb, id)).unwrap_or_default()
}

/// Run the queue to the end with `supervisor run --until-empty`.
fn run_until_empty(sb: &Sandbox) {
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(LONG), Some(0), "{}", sv.dump());
    sv.assert_nothing_left(LONG);
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ----- jobs as a user, with limits -------------------------------------------------------

#[test]
fn a_job_runs_as_its_groups_user_with_its_limits_niceness_and_environment() {
    let test = "a_job_runs_as_its_groups_user_with_its_limits_niceness_and_environment";
    let Some(nobody) = root_and_nobody(test) else {
        return;
    };
    let users_gid =
        tool("getent", &["group", "users"]).and_then(|g| g.split(':').nth(2).map(str::to_string));
    let mut groups = vec![json!({
        "name": "as-nobody",
        "user": "nobody",
        "rlimits": {"nofile": 64, "core": 0},
        "nice": 5,
    })];
    if users_gid.is_some() {
        groups.push(json!({"name": "as-nobody-in-users", "user": "nobody", "group": "users"}));
    }
    let sb = Sandbox::new(&config(groups));
    let script = "id -u; id -G; ulimit -n; ulimit -c; cut -d' ' -f19 /proc/self/stat; \
                  echo \"HOME=$HOME USER=$USER LOGNAME=$LOGNAME\"; \
                  echo reopened >>/dev/stderr";
    let id = sb.submit(&[
        "--group",
        "as-nobody",
        "--cwd",
        "/",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let in_users = users_gid.as_ref().map(|_| {
        sb.submit(&[
            "--group",
            "as-nobody-in-users",
            "--cwd",
            "/",
            "--",
            "sh",
            "-c",
            "id -u; id -g",
        ])
    });
    run_until_empty(&sb);

    let job = sb.job(id);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", read_log(&sb, id));
    let log = read_log(&sb, id);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines,
        [
            nobody.uid.as_str(),
            nobody.groups.as_str(),
            "64",
            "0",
            "5",
            &format!("HOME={} USER=nobody LOGNAME=nobody", nobody.home),
            "reopened",
        ],
        "{log}"
    );
    // The log stays private (0600 in a 0700 folder of root's) and is the job user's own,
    // so that it could reopen it through /dev/stderr.
    let meta = std::fs::metadata(log_of(&sb, id)).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid().to_string(), nobody.uid);
    let logs = std::fs::metadata(sb.path().join("state/logs")).unwrap();
    assert_eq!((logs.mode() & 0o777, logs.uid()), (0o700, 0));

    match (in_users, users_gid) {
        (Some(id), Some(gid)) => {
            let log = read_log(&sb, id);
            assert_eq!(
                log.lines().collect::<Vec<_>>(),
                [nobody.uid.as_str(), &gid],
                "{log}"
            );
        }
        _ => eprintln!("{test}: no group `users` here: the `group` key is not tried"),
    }
}

#[test]
fn a_job_that_opens_more_files_than_its_nofile_allows_fails() {
    // Lowering a limit needs no privilege: this runs as any user.
    let sb = Sandbox::new(&config(vec![json!({
        "name": "few-files",
        "match": {},
        "rlimits": {"nofile": 6},
    })]));
    // Three files and stdin, stdout, stderr: fds 0 to 5 fit; a fourth file does not.
    let fits = sb.submit(&[
        "--",
        "sh",
        "-c",
        "ulimit -n; paste /dev/null /dev/null /dev/null",
    ]);
    let exceeds = sb.submit(&[
        "--",
        "sh",
        "-c",
        "paste /dev/null /dev/null /dev/null /dev/null && echo unreachable",
    ]);
    run_until_empty(&sb);
    let job = sb.job(fits);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(read_log(&sb, fits).trim(), "6");
    let job = sb.job(exceeds);
    assert_eq!(job["state"], "dead", "{job}");
    assert_eq!(job["exit_code"], 1, "{job}");
    let log = read_log(&sb, exceeds);
    assert!(log.contains("Too many open files"), "{log}");
    assert!(!log.contains("unreachable"), "{log}");
}

#[test]
fn a_job_its_user_cannot_reach_fails_to_start_and_says_why() {
    let test = "a_job_its_user_cannot_reach_fails_to_start_and_says_why";
    if root_and_nobody(test).is_none() {
        return;
    }
    let sb = Sandbox::new(&config(vec![
        json!({"name": "as-nobody", "user": "nobody"}),
    ]));
    // A submitter's private folder (root's, 0700), where `submit` runs: the job's
    // directory by default.
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let in_private_dir = sb.submit(&["--group", "as-nobody", "--", "true"]);
    // A program in it, from a directory anyone can enter.
    let script = sb.path().join("job.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let private_program = sb.submit(&[
        "--group",
        "as-nobody",
        "--cwd",
        "/",
        "--",
        script.to_str().unwrap(),
    ]);
    run_until_empty(&sb);

    let dir = sb.path().display().to_string();
    for (id, want) in [
        (
            in_private_dir,
            format!("cannot change to directory {dir} as user nobody: Permission denied"),
        ),
        (
            private_program,
            format!(
                "cannot execute `{}` as user nobody: Permission denied",
                script.display()
            ),
        ),
    ] {
        let job = sb.job(id);
        assert_eq!(job["state"], "dead", "{job}");
        let why = job["start_error"].as_str().unwrap_or_default();
        assert!(why.contains(&want), "{job}");
        assert!(read_log(&sb, id).contains(&want), "the log says it too");
    }
}

#[test]
fn other_users_cannot_read_the_store_the_logs_or_the_events() {
    let test = "other_users_cannot_read_the_store_the_logs_or_the_events";
    let (Some(_), Some(runuser)) = (root_and_nobody(test), runuser(test)) else {
        return;
    };
    let sb = Sandbox::new(&config(vec![json!({"name": "a", "match": {}})]));
    let id = sb.submit(&[
        "--env",
        "TOKEN=s3cret",
        "--",
        "sh",
        "-c",
        "echo token=$TOKEN",
    ]);
    run_until_empty(&sb);
    assert_eq!(read_log(&sb, id).trim(), "token=s3cret");
    open_to_others(&sb);
    let state = sb.path().join("state");
    let cat = Path::new("/bin/cat");
    for file in ["jobs.db", &format!("logs/{id}.log"), "events.jsonl"] {
        let path = state.join(file);
        assert!(path.exists(), "{}", path.display());
        let out = as_nobody(&runuser, cat, &[path.to_str().unwrap()]);
        assert!(!out.status.success(), "nobody read {file}");
        assert!(
            stderr_of(&out).contains("Permission denied"),
            "{file}: {}",
            stderr_of(&out)
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
        // Nor could it through a looser folder: the files are the owner's alone.
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o077,
            0,
            "{file}"
        );
    }
    // Nor through the verbs.
    let sv_bin = nobody_bin(&runuser);
    let config_path = sb.config_path();
    let config_arg = config_path.to_str().unwrap();
    let id_arg = id.to_string();
    for args in [
        vec!["job", &id_arg, "--json", "-c", config_arg],
        vec!["events", "--json", "-c", config_arg],
        vec!["jobs", "--json", "-c", config_arg],
        vec!["submit", "-c", config_arg, "--", "true"],
    ] {
        let out = as_nobody(&runuser, &sv_bin.path, &args);
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(!printed.contains("s3cret"), "{args:?}: {printed}");
        assert_ne!(out.status.code(), Some(0), "{args:?}: {}", stderr_of(&out));
        assert!(
            !stderr_of(&out).contains("panicked"),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert!(
            stderr_of(&out).contains("ermission denied"),
            "{args:?}: a clear error: {}",
            stderr_of(&out)
        );
    }
    // Nobody's submit left no job, not even half of one.
    let jobs = sb.run(&["jobs", "--json"]);
    let jobs: Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");
}

// ----- config errors and warnings --------------------------------------------------------

#[test]
fn users_and_limits_that_cannot_be_are_config_errors_naming_the_key() {
    let test = "users_and_limits_that_cannot_be_are_config_errors_naming_the_key";
    let unknown = Sandbox::new(&config(vec![
        json!({"name": "a"}),
        json!({"name": "b", "user": "no-such-user-4242"}),
    ]));
    for verb in [&["check"][..], &["run", "--until-empty"]] {
        let out = unknown.run(verb);
        assert_eq!(out.status.code(), Some(2), "{verb:?}");
        assert!(
            stderr_of(&out).contains("groups[1].user: no such user \"no-such-user-4242\""),
            "{verb:?}: {}",
            stderr_of(&out)
        );
    }
    let bad = Sandbox::new(&config(vec![json!({
        "name": "a",
        "rlimits": {"nofile": 2, "cpu_s": -1, "stack": 1},
        "nice": 99,
        "group": "users",
    })]));
    let out = bad.run(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    for want in [
        "groups[0].rlimits.nofile: must be >= 3 and <= 1048576, found 2",
        "groups[0].rlimits.cpu_s: must be >= 1 and <= 1000000000, found -1",
        "groups[0].rlimits.stack: unknown key",
        "groups[0].nice: must be >= -20 and <= 19, found 99",
        "groups[0].group: needs `user`",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }

    // A supervisor that is not root cannot run jobs as anyone.
    let (Some(_), Some(runuser)) = (root_and_nobody(test), runuser(test)) else {
        return;
    };
    let sb = Sandbox::new(&config(vec![json!({"name": "a", "user": "nobody"})]));
    assert_eq!(sb.run(&["check"]).status.code(), Some(0), "fine as root");
    open_to_others(&sb);
    let sv_bin = nobody_bin(&runuser);
    let out = as_nobody(
        &runuser,
        &sv_bin.path,
        &["check", "-c", sb.config_path().to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!(
            "groups[0].user: running jobs as \"nobody\" needs a supervisor running as root \
             (this process runs as uid {})",
            tool("id", &["-u", "nobody"]).unwrap()
        )),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn check_warns_of_jobs_that_would_run_as_root_and_of_limits_no_cgroup_enforces() {
    let test = "check_warns_of_jobs_that_would_run_as_root_and_of_limits_no_cgroup_enforces";
    if root_and_nobody(test).is_none() {
        return;
    }
    let sb = Sandbox::new(&config(vec![
        json!({"name": "as-root"}),
        json!({
            "name": "limited",
            "user": "nobody",
            "memory_max_bytes": 268435456,
            "cpu_max": 0.5,
        }),
    ]));
    let out = sb.run(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: 2 groups"));
    let err = stderr_of(&out);
    assert!(
        err.contains(
            "supervisor: warning: groups[0] (\"as-root\") has no `user`: its jobs would run as root"
        ),
        "{err}"
    );
    assert!(!err.contains("groups[1] (\"limited\")"), "{err}");
    match supervisor_os::cgroup::detect() {
        Err(why) => assert!(
            err.contains(&format!(
                "supervisor: warning: groups[1].memory_max_bytes, groups[1].cpu_max will not be \
                 enforced: cgroups are not in use for this process: {why}"
            )),
            "{err}"
        ),
        Ok(found) => {
            eprintln!(
                "{test}: this machine has a delegated cgroup ({}): no warning to see",
                found.dir().display()
            );
            assert!(!err.contains("will not be enforced"), "{err}");
        }
    }
    // Every group with a user: nothing to warn of.
    let quiet = Sandbox::new(&config(vec![json!({"name": "a", "user": "nobody"})]));
    let out = quiet.run(&["check"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr_of(&out), "");
}

#[test]
fn status_says_whether_cgroups_are_in_use_and_a_job_with_cgroup_limits_runs() {
    let test = "status_says_whether_cgroups_are_in_use_and_a_job_with_cgroup_limits_runs";
    let sb = Sandbox::new(&config(vec![json!({
        "name": "limited",
        "match": {},
        "memory_max_bytes": 67108864,
        "cpu_max": 0.5,
    })]));
    let mut sv = sb.start(&[]);
    let ran = sb.submit(&["--", "sh", "-c", "echo ran"]);
    let job = sb.wait_job(ran, &["succeeded", "dead"], LONG);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(read_log(&sb, ran).trim(), "ran");

    let status = sb.status_json();
    let cgroups = &status["cgroups"];
    let text = String::from_utf8_lossy(&sb.run(&["status"]).stdout).into_owned();
    match supervisor_os::cgroup::detect_pid(sv.pid()) {
        Err(why) => {
            assert_eq!(
                *cgroups,
                json!({"in_use": false, "dir": null, "reason": why}),
                "{status}"
            );
            assert!(
                text.contains(&format!(
                    "cgroups: not in use (memory_max_bytes and cpu_max are not enforced): {why}"
                )),
                "{text}"
            );
            eprintln!("{test}: no delegated cgroup v2 here ({why}): enforcement not tried");
        }
        Ok(found) => {
            let dir = found.dir().display().to_string();
            assert_eq!(
                *cgroups,
                json!({"in_use": true, "dir": dir, "reason": null}),
                "{status}"
            );
            assert!(text.contains("cgroups: in use"), "{text}");
            // A job past its memory limit is killed, and its log says so (dd's buffer
            // is its block size).
            let hog = sb.submit(&[
                "--",
                "dd",
                "if=/dev/zero",
                "of=/dev/null",
                "bs=256M",
                "count=1",
            ]);
            let job = sb.wait_job(hog, &["succeeded", "dead"], LONG);
            assert_eq!(job["state"], "dead", "{job}");
            let log = read_log(&sb, hog);
            assert!(log.contains("killed for its memory limit"), "{log}");
        }
    }
    sv.stop_cleanly();
    let status = sb.status_json();
    assert_eq!(
        status["cgroups"],
        json!({"in_use": false, "dir": null, "reason": "the supervisor is not running"})
    );
}

/// `ps` shows every user each process's command line: a child's says what it is and
/// nothing else (its arguments, the store's URL among them, come on a pipe), and a job
/// started by a worker is not taken for a child.
#[test]
fn a_child_s_command_line_says_what_it_is_and_nothing_more() {
    let sb = Sandbox::new(&json!({
        "heartbeat": {"interval_s": 0.2, "timeout_s": 2},
        "shutdown_grace_s": 1,
        "groups": [{"name": "build", "max_workers": 2}],
    }));
    let mut sv = sb.start(&[]);
    sv.wait_started();
    let ready = sv.wait_events(LONG, 3, |e| e["event"] == "child_started");
    let mut titles: Vec<Vec<u8>> = ready
        .iter()
        .map(|e| {
            let pid = e["pid"].as_u64().unwrap();
            let read = || std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            // The spawner returns once the child's exec has replaced its memory; the
            // kernel sets where its arguments are a moment later (until then,
            // /proc/PID/cmdline reads empty).
            let _ = crate::common::wait_until(LONG, || !read().is_empty());
            read()
        })
        .collect();
    titles.sort();
    // Exactly one argument each, and nothing after it.
    assert_eq!(
        titles,
        [
            b"supervisor: grabber\0".to_vec(),
            b"supervisor: worker build/0\0".to_vec(),
            b"supervisor: worker build/1\0".to_vec(),
        ],
        "children's command lines"
    );
    // A busy worker's command line says no more.
    let busy = sb.submit(&["--group", "build", "--", "sleep", "30"]);
    let started = sv.wait_event(LONG, |e| e["event"] == "job_started" && e["job_id"] == busy);
    let worker = started["worker_pid"].as_u64().unwrap();
    let slot = started["slot"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{worker}/cmdline")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cmdline),
        format!("supervisor: worker build/{slot}\0"),
        "a busy worker's command line"
    );
    assert_eq!(
        sb.run(&["cancel", &busy.to_string()]).status.code(),
        Some(0)
    );
    sb.wait_job(busy, &["canceled"], LONG);
    // A job sees neither the marker nor the arguments, and a `supervisor` it runs is a
    // verb like any other.
    let id = sb.submit(&[
        "--group",
        "build",
        "--",
        "sh",
        "-c",
        "env | grep -c '^SUPERVISOR_CHILD=' ; \"$0\" --version",
        bin().to_str().unwrap(),
    ]);
    let job = sb.wait_job(id, &["succeeded", "failed", "dead"], LONG);
    let log = read_log(&sb, id);
    assert!(log.starts_with("0\nsupervisor "), "{job}: {log}");
    sv.stop_cleanly();
}
