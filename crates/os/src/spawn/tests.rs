//! The spawner's tests: what a job starts with, how it ends, and how a failed step is
//! named. The tests that switch users run only as root (they say so and skip otherwise).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::plan::candidates;
use super::*;

fn run(argv: &[&str], cwd: Option<&Path>) -> (Result<Ended, SpawnError>, String) {
    run_with(argv, cwd, &JobSetup::default())
}

fn run_with(
    argv: &[&str],
    cwd: Option<&Path>,
    setup: &JobSetup<'_>,
) -> (Result<Ended, SpawnError>, String) {
    let dir = tempfile_dir();
    let out_path = dir.join("out");
    let out = File::create(&out_path).unwrap();
    let null = File::open("/dev/null").unwrap();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    env.push(("SPAWN_TEST".into(), "yes".into()));
    let cmd = JobCommand {
        argv: &argv,
        env,
        cwd,
        stdin: null.as_fd(),
        output: out.as_fd(),
        program: None,
        death_signal: nix::sys::signal::Signal::SIGKILL,
        umask: None,
    };
    let result = Spawner::new()
        .spawn_with(&cmd, setup)
        .map(|pid| wait_pid(pid).unwrap());
    let mut text = String::new();
    File::open(&out_path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (result, text)
}

fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sv-spawn-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn runs_with_env_cwd_output_and_a_clean_slate() {
    let script = "echo env=$SPAWN_TEST; pwd; ls /proc/self/fd | wc -l; \
                  ps -o pgid= -p $$ | tr -d ' '; echo $$; \
                  grep -E '^(SigBlk|SigIgn)' /proc/self/status; echo err >&2; \
                  read x; echo read=$?";
    let (res, text) = run(&["sh", "-c", script], Some(Path::new("/")));
    assert_eq!(res.unwrap(), Ended::Code(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "env=yes");
    assert_eq!(lines[1], "/");
    // 0, 1, 2 and the fd ls opens for /proc/self/fd.
    assert_eq!(lines[2].trim(), "4", "{text}");
    assert_eq!(lines[3], lines[4], "a fresh process group: {text}");
    // Nothing blocked or ignored; glibc keeps signals 32 and 33 (its own) out of
    // reach of sigaction, so they stay as inherited.
    let mask = |line: &str| {
        let hex = line.split('\t').nth(1).unwrap();
        u64::from_str_radix(hex, 16).unwrap() & !(0b11 << 31)
    };
    assert_eq!(mask(lines[5]), 0, "{text}");
    assert_eq!(mask(lines[6]), 0, "{text}");
    assert_eq!(lines[7], "err");
    assert_eq!(lines[8], "read=1", "stdin is /dev/null: {text}");
}

#[test]
fn exit_codes_and_signals_come_back() {
    assert_eq!(
        run(&["sh", "-c", "exit 7"], None).0.unwrap(),
        Ended::Code(7)
    );
    assert_eq!(
        run(&["sh", "-c", "kill -TERM $$"], None).0.unwrap(),
        Ended::Signal(libc::SIGTERM)
    );
}

#[test]
fn failures_name_the_step_and_reap_the_child() {
    let err = run(&["no-such-program-here"], None).0.unwrap_err();
    assert!(
        matches!(&err, SpawnError::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-program-here"), "{err}");
    let err = run(&["/etc/passwd"], None).0.unwrap_err();
    assert!(
        matches!(&err, SpawnError::Exec { source, .. } if source.kind() == io::ErrorKind::PermissionDenied),
        "{err}"
    );
    let err = run(&["true"], Some(Path::new("/no/such/dir")))
        .0
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
    assert!(matches!(err, SpawnError::Cwd { .. }), "{err}");
    assert!(matches!(run(&[], None).0, Err(SpawnError::EmptyCommand)));
}

fn limits() -> Vec<Limit> {
    [
        (Resource::OpenFiles, 37),
        (Resource::Processes, 5000),
        (Resource::CoreBytes, 0),
        (Resource::AddressSpace, 4 << 30),
        (Resource::CpuSeconds, 600),
    ]
    .map(|(resource, value)| Limit { resource, value })
    .to_vec()
}

#[test]
fn limits_and_niceness_apply_to_the_job_alone() {
    let limits = limits();
    let setup = JobSetup {
        limits: &limits,
        nice: Some(7),
        ..JobSetup::default()
    };
    // Soft and hard alike; niceness is field 19 of /proc/PID/stat.
    let script = "ulimit -Sn; ulimit -Hn; ulimit -p; ulimit -c; ulimit -v; ulimit -t; \
                  cut -d' ' -f19 /proc/self/stat";
    let (res, text) = run_with(&["sh", "-c", script], None, &setup);
    assert_eq!(res.unwrap(), Ended::Code(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["37", "37", "5000", "0", "4194304", "600", "7"],
        "{text}"
    );
    // The spawner's own are untouched.
    let own = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert_ne!(own, (37, 37));
    // A file descriptor past the limit cannot be opened.
    let (res, text) = run_with(
        &["sh", "-c", "exec 40</dev/null; echo opened"],
        None,
        &setup,
    );
    assert_ne!(res.unwrap(), Ended::Code(0), "{text}");
    assert!(!text.contains("opened"), "{text}");
}

#[test]
fn a_limit_the_kernel_refuses_is_named() {
    // More file descriptors than the kernel allows (fs.nr_open).
    let limits = [Limit {
        resource: Resource::OpenFiles,
        value: u64::from(u32::MAX),
    }];
    let setup = JobSetup {
        limits: &limits,
        ..JobSetup::default()
    };
    let err = run_with(&["true"], None, &setup).0.unwrap_err();
    assert!(
        matches!(
            err,
            SpawnError::Limit {
                resource: Resource::OpenFiles,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("rlimits.nofile"), "{err}");
}

/// Root's tests: switching users needs the privilege.
fn root_or_skip(what: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: {what} needs root");
    }
    root
}

fn nobody() -> Credentials {
    Credentials {
        user: "nobody".into(),
        uid: 65534,
        gid: 65534,
        groups: vec![65534, 4242],
    }
}

#[test]
fn the_job_runs_as_its_user_with_its_groups_and_keeps_its_output() {
    if !root_or_skip("switching users") {
        return;
    }
    let creds = nobody();
    let setup = JobSetup {
        credentials: Some(&creds),
        nice: Some(-3),
        ..JobSetup::default()
    };
    let script = "id -u; id -g; id -G; grep -E '^(Uid|Gid)' /proc/self/status; \
                  cut -d' ' -f19 /proc/self/stat";
    let (res, text) = run_with(&["sh", "-c", script], Some(Path::new("/")), &setup);
    assert_eq!(res.unwrap(), Ended::Code(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..3], ["65534", "65534", "65534 4242"], "{text}");
    // Real, effective, saved and file-system ids: no way back.
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>()[1..],
        ["65534"; 4]
    );
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>()[1..],
        ["65534"; 4]
    );
    // Niceness below 0: set while still privileged.
    assert_eq!(lines[5], "-3", "{text}");
    // The worker's own identity is untouched.
    assert!(nix::unistd::geteuid().is_root());
    assert!(nix::unistd::getuid().is_root());
}

#[test]
fn the_users_permissions_apply_to_its_directory_and_program() {
    if !root_or_skip("switching users") {
        return;
    }
    let creds = nobody();
    let setup = JobSetup {
        credentials: Some(&creds),
        ..JobSetup::default()
    };
    let private = tempfile_dir();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let err = run_with(&["true"], Some(&private), &setup).0.unwrap_err();
    assert!(
        matches!(&err, SpawnError::Cwd { source, .. } if source.kind() == io::ErrorKind::PermissionDenied),
        "{err}"
    );
    assert!(err.to_string().contains("as user nobody"), "{err}");
    let script = private.join("job.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let err = run_with(&[script.to_str().unwrap()], None, &setup)
        .0
        .unwrap_err();
    assert!(
        matches!(&err, SpawnError::Exec { source, .. } if source.kind() == io::ErrorKind::PermissionDenied),
        "{err}"
    );
    std::fs::remove_dir_all(&private).unwrap();
}

#[test]
fn the_death_signal_survives_the_switch_of_user() {
    if !root_or_skip("switching users") {
        return;
    }
    let creds = nobody();
    let argv = vec!["sleep".to_string(), "60".to_string()];
    // Spawned from a thread that then ends: the job must get its death signal.
    let pid = std::thread::spawn(move || {
        let null = File::open("/dev/null").unwrap();
        let cmd = JobCommand {
            argv: &argv,
            env: std::env::vars_os().collect(),
            cwd: Some(Path::new("/")),
            stdin: null.as_fd(),
            output: null.as_fd(),
            program: None,
            death_signal: nix::sys::signal::Signal::SIGKILL,
            umask: None,
        };
        let setup = JobSetup {
            credentials: Some(&creds),
            ..JobSetup::default()
        };
        Spawner::new().spawn_with(&cmd, &setup).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(wait_pid(pid).unwrap(), Ended::Signal(libc::SIGKILL));
}

#[test]
fn a_cgroup_that_refuses_the_job_is_named() {
    // A file that takes no write stands in for a cgroup.procs that refuses.
    let null = File::open("/dev/null").unwrap();
    let setup = JobSetup {
        cgroup_procs: Some(null.as_fd()),
        ..JobSetup::default()
    };
    let err = run_with(&["true"], None, &setup).0.unwrap_err();
    assert!(matches!(err, SpawnError::Cgroup(_)), "{err}");
    // One that takes it.
    let sink = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let setup = JobSetup {
        cgroup_procs: Some(sink.as_fd()),
        ..JobSetup::default()
    };
    assert_eq!(run_with(&["true"], None, &setup).0.unwrap(), Ended::Code(0));
}

#[test]
fn path_lookup_follows_the_jobs_path() {
    let c = candidates("tool", Some(OsStr::new("/a::/b"))).unwrap();
    let c: Vec<&str> = c.iter().map(|c| c.to_str().unwrap()).collect();
    assert_eq!(c, ["/a/tool", "./tool", "/b/tool"]);
    let c = candidates("./x/tool", Some(OsStr::new("/a"))).unwrap();
    assert_eq!(c[0].to_str().unwrap(), "./x/tool");
}

#[test]
fn a_spawner_sharing_the_fd_table_hands_over_the_same_slate_and_holds_no_pipe() {
    // Descriptors of the parent's that the child must not get: many, some high.
    let held: Vec<File> = (0..200).map(|_| File::open("/dev/null").unwrap()).collect();
    let dir = tempfile_dir();
    let out_path = dir.join("out");
    let out = File::create(&out_path).unwrap();
    let (stdin_read, mut stdin_write) = std::io::pipe().unwrap();
    let argv: Vec<String> = ["sh", "-c", "ls /proc/self/fd | sort -n | tr '\\n' ' '; cat"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cmd = JobCommand {
        argv: &argv,
        env: std::env::vars_os().collect(),
        cwd: None,
        stdin: stdin_read.as_fd(),
        output: out.as_fd(),
        program: None,
        death_signal: nix::sys::signal::Signal::SIGKILL,
        umask: None,
    };
    let mut spawner = Spawner::sharing_fd_table();
    assert!(spawner.low.is_some(), "no low descriptors taken");
    let pid = spawner.spawn(&cmd).unwrap();
    // Only the child holds the pipe's read end now: once the write end is closed, its
    // `cat` sees the end of its input and the job ends.
    drop(stdin_read);
    use std::io::Write;
    stdin_write.write_all(b"fed through the pipe\n").unwrap();
    drop(stdin_write);
    assert_eq!(wait_pid(pid).unwrap(), Ended::Code(0));
    let text = std::fs::read_to_string(&out_path).unwrap();
    // `ls` sees 0-2 and the directory it reads (3); nothing of ours.
    assert!(
        text.starts_with("0 1 2 3 \n") || text.starts_with("0 1 2 3 "),
        "{text:?}"
    );
    assert!(text.ends_with("fed through the pipe\n"), "{text:?}");
    // A second spawn from the same spawner works as the first.
    let argv: Vec<String> = ["true"].iter().map(|s| s.to_string()).collect();
    let null = File::open("/dev/null").unwrap();
    let cmd = JobCommand {
        argv: &argv,
        env: std::env::vars_os().collect(),
        cwd: None,
        stdin: null.as_fd(),
        output: out.as_fd(),
        program: None,
        death_signal: nix::sys::signal::Signal::SIGKILL,
        umask: None,
    };
    assert_eq!(
        wait_pid(spawner.spawn(&cmd).unwrap()).unwrap(),
        Ended::Code(0)
    );
    drop(held);
    std::fs::remove_dir_all(&dir).unwrap();
}
