//! Per-job cgroups (cgroup v2), for the limits `setrlimit` cannot set: a group's
//! `memory_max_bytes` (`memory.max`) and `cpu_max` (`cpu.max`).
//!
//! Only where the supervisor was given a cgroup of its own to manage (delegated, as
//! systemd's `Delegate=yes` does): it never takes over a cgroup that is not its own. The
//! layout is systemd's for delegation with `DelegateSubgroup=`: the supervisor and its
//! children live in a leaf (`<delegated>/supervisor`), and each job that has limits runs
//! in `<delegated>/job-<id>-<attempt>`, a sibling made for it and removed after it. A
//! supervisor that runs in the delegated cgroup itself cannot be given job cgroups with
//! controllers (cgroup v2 gives controllers only to the children of a cgroup without
//! processes of its own), so it does not use any, and [`detect`] says why.
//!
//! Everything here reads and writes files under a cgroup2 mount found in
//! `/proc/PID/mountinfo`, so the tests run it on a fake tree in a temp dir.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// The period of `cpu.max`, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest quota `cpu.max` takes, in microseconds.
pub const MIN_CPU_QUOTA_US: u64 = 1_000;

/// The extended attributes by which systemd marks a cgroup it delegated (`trusted.` for
/// the system manager, `user.` readable by the unprivileged too).
const DELEGATE_XATTRS: [&str; 2] = ["trusted.delegate", "user.delegate"];

/// A delegated cgroup v2 in which the supervisor makes its jobs' cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegated {
    dir: PathBuf,
}

/// The limits of one job's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CgroupLimits {
    /// `memory.max`, in bytes.
    pub memory_max_bytes: Option<u64>,
    /// CPUs, as `cpu.max`'s quota over its period: 0.5 is half of one CPU.
    pub cpu_max: Option<f64>,
}

impl CgroupLimits {
    /// Whether any limit is set (else a job needs no cgroup of its own).
    pub fn any(&self) -> bool {
        self.memory_max_bytes.is_some() || self.cpu_max.is_some()
    }
}

/// The delegated cgroup this process may make job cgroups in, or why there is none.
pub fn detect() -> Result<Delegated, String> {
    detect_pid(std::process::id())
}

/// [`detect`] for the process `pid` (another verb asks about the running supervisor).
pub fn detect_pid(pid: u32) -> Result<Delegated, String> {
    let read = |what: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{what}"))
            .map_err(|e| format!("cannot read /proc/{pid}/{what}: {e}"))
    };
    detect_from(
        &read("cgroup")?,
        &read("mountinfo")?,
        crate::users::effective_uid(),
    )
}

/// [`detect`] from the text of `/proc/PID/cgroup` and `/proc/PID/mountinfo`, for a
/// process whose effective uid is `euid`.
pub fn detect_from(cgroup: &str, mountinfo: &str, euid: u32) -> Result<Delegated, String> {
    let own = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 hierarchy here (cgroup v1 only)")?;
    let mount = cgroup2_mount(mountinfo, own).ok_or("cgroup2 is not mounted")?;
    let found = read_words(&mount.dir.join("cgroup.controllers"));
    if !has_controllers(&found) {
        return Err(format!(
            "the cgroup v2 hierarchy at {} has no memory and cpu controllers (it has: {}); \
             on a cgroup v1/v2 hybrid they belong to cgroup v1",
            mount.dir.display(),
            words_or_none(&found)
        ));
    }
    let rel = own.strip_prefix(mount.root.as_str()).unwrap_or(own);
    let rel: PathBuf = Path::new(rel)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let Some(parent) = rel.parent().filter(|_| !rel.as_os_str().is_empty()) else {
        return Err(format!(
            "the supervisor runs in the root cgroup of {}, not in one delegated to it",
            mount.dir.display()
        ));
    };
    let leaf = mount.dir.join(&rel);
    let dir = mount.dir.join(parent);
    if !delegated(&dir, euid) {
        if delegated(&leaf, euid) {
            return Err(format!(
                "the supervisor runs in its delegated cgroup {} itself, which cgroup v2 \
                 lets give controllers to no job cgroup: start it in a sub-cgroup of it \
                 (systemd: DelegateSubgroup=supervisor)",
                leaf.display()
            ));
        }
        return Err(format!(
            "{} is not delegated to the supervisor (systemd: Delegate=yes with \
             DelegateSubgroup=supervisor in its unit)",
            dir.display()
        ));
    }
    let found = read_words(&dir.join("cgroup.controllers"));
    if !has_controllers(&found) {
        return Err(format!(
            "the delegated cgroup {} has no memory and cpu controllers (it has: {})",
            dir.display(),
            words_or_none(&found)
        ));
    }
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(procs) if procs.trim().is_empty() => {}
        Ok(_) => {
            return Err(format!(
                "the delegated cgroup {} has processes of its own, so cgroup v2 gives its \
                 sub-cgroups no controllers",
                dir.display()
            ))
        }
        Err(e) => return Err(format!("cannot read {}/cgroup.procs: {e}", dir.display())),
    }
    for path in [dir.clone(), dir.join("cgroup.subtree_control")] {
        if let Err(e) = nix::unistd::access(&path, nix::unistd::AccessFlags::W_OK) {
            return Err(format!("cannot write {}: {e}", path.display()));
        }
    }
    Ok(Delegated { dir })
}

/// Whether `dir` is a cgroup delegated to a process of effective uid `euid`: systemd's
/// mark, or (for an unprivileged process) a cgroup it owns.
fn delegated(dir: &Path, euid: u32) -> bool {
    DELEGATE_XATTRS
        .iter()
        .any(|name| get_xattr(dir, name).is_some_and(|v| v == b"1"))
        || (euid != 0 && std::fs::metadata(dir).is_ok_and(|m| m.uid() == euid))
}

/// The value of the extended attribute `name` of `path` (at most 64 bytes), if set.
fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live across the call; the kernel
    // writes at most `buf.len()` bytes into `buf`.
    #[allow(unsafe_code)]
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

struct Mount {
    /// Where it is mounted.
    dir: PathBuf,
    /// The cgroup at its top (not `/` inside a cgroup namespace's bind mounts).
    root: String,
}

/// The cgroup2 mount that holds the cgroup `own`.
fn cgroup2_mount(mountinfo: &str, own: &str) -> Option<Mount> {
    mountinfo.lines().find_map(|line| {
        let (fields, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = fields.split_whitespace().collect();
        let root = unescape(fields.get(3)?);
        let dir = PathBuf::from(unescape(fields.get(4)?));
        let inside = root == "/"
            || own == root
            || own
                .strip_prefix(root.as_str())
                .is_some_and(|r| r.starts_with('/'));
        inside.then_some(Mount { dir, root })
    })
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn has_controllers(words: &[String]) -> bool {
    ["memory", "cpu"]
        .iter()
        .all(|c| words.iter().any(|w| w.trim_start_matches('+') == *c))
}

fn words_or_none(words: &[String]) -> String {
    if words.is_empty() {
        "none".to_string()
    } else {
        words.join(" ")
    }
}

/// `cpu.max` for `cpus` CPUs: `"QUOTA PERIOD"` in microseconds.
pub fn cpu_max_line(cpus: f64) -> String {
    let quota = (cpus * CPU_PERIOD_US as f64).round();
    let quota = if quota.is_finite() {
        (quota as u64).max(MIN_CPU_QUOTA_US)
    } else {
        MIN_CPU_QUOTA_US
    };
    format!("{quota} {CPU_PERIOD_US}")
}

/// How many times the OOM killer acted in a cgroup, from its `memory.events`.
pub fn oom_kills(memory_events: &str) -> u64 {
    memory_events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

impl Delegated {
    /// The delegated cgroup's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hand the memory and cpu controllers down to the job cgroups (idempotent).
    pub fn enable_controllers(&self) -> io::Result<()> {
        let path = self.dir.join("cgroup.subtree_control");
        let enabled = read_words(&path);
        if has_controllers(&enabled) {
            return Ok(());
        }
        std::fs::write(&path, "+memory +cpu")
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// Make (or take over, when a dead worker left it) the cgroup `name` for one job,
    /// with `limits`, and open its `cgroup.procs` for the spawner.
    pub fn create_job(&self, name: &str, limits: &CgroupLimits) -> io::Result<JobCgroup> {
        let safe = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        if !safe {
            return Err(io::Error::other(format!("bad cgroup name {name:?}")));
        }
        let dir = self.dir.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(named(&dir, e)),
        }
        let write = |file: &str, text: &str| {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(|e| named(&path, e))
        };
        let created = (|| {
            write(
                "memory.max",
                &limits
                    .memory_max_bytes
                    .map_or("max".to_string(), |b| b.to_string()),
            )?;
            write(
                "cpu.max",
                &limits
                    .cpu_max
                    .map_or(format!("max {CPU_PERIOD_US}"), cpu_max_line),
            )?;
            // The OOM killer takes the whole job, not one of its processes.
            write("memory.oom.group", "1")?;
            let procs_path = dir.join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&procs_path)
                .map_err(|e| named(&procs_path, e))
        })();
        match created {
            Ok(procs) => Ok(JobCgroup { dir, procs }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// One job's cgroup: the spawner moves the job into it, and it goes once the job's
/// processes are all gone.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    procs: File,
}

impl JobCgroup {
    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its `cgroup.procs`, open for writing (see [`crate::JobSetup::cgroup_procs`]).
    pub fn procs(&self) -> BorrowedFd<'_> {
        self.procs.as_fd()
    }

    /// How many times the OOM killer acted in it (`oom_kill` of `memory.events`).
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.events"))
            .map(|text| oom_kills(&text))
            .unwrap_or(0)
    }

    /// Remove it. A process still in it (one that left the worker's reach) is killed
    /// (`cgroup.kill`) and the cgroup given back to try again later.
    pub fn remove(self) -> Result<(), (JobCgroup, io::Error)> {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
                }
                let e = named(&self.dir, e);
                Err((self, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup2 mount in a temp dir: `<mount>/sup.service` delegated (when the
    /// file system takes `user.` attributes), the supervisor in its `supervisor` leaf.
    struct Tree {
        mount: PathBuf,
    }

    impl Tree {
        fn new(top_controllers: &str) -> Tree {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let mount = std::env::temp_dir().join(format!(
                "sv-cgroup-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let service = mount.join("sup.service");
            std::fs::create_dir_all(service.join("supervisor")).unwrap();
            std::fs::write(mount.join("cgroup.controllers"), top_controllers).unwrap();
            std::fs::write(service.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
            std::fs::write(service.join("cgroup.procs"), "").unwrap();
            std::fs::write(service.join("cgroup.subtree_control"), "").unwrap();
            Tree { mount }
        }

        fn service(&self) -> PathBuf {
            self.mount.join("sup.service")
        }

        fn mountinfo(&self) -> String {
            format!(
                "24 1 8:1 / / rw - ext4 /dev/vda rw\n\
                 31 23 0:28 / {} rw,relatime - cgroup2 cgroup2 rw\n",
                self.mount.display().to_string().replace(' ', "\\040")
            )
        }

        /// Mark `dir` as systemd marks a delegated cgroup; false where the file system
        /// takes no `user.` attributes.
        fn mark(&self, dir: &Path) -> bool {
            use std::os::unix::ffi::OsStrExt;
            let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
            // SAFETY: NUL-terminated strings and a 1-byte value that outlive the call.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    c"user.delegate".as_ptr(),
                    b"1".as_ptr().cast(),
                    1,
                    0,
                )
            };
            if rc != 0 {
                eprintln!(
                    "skipped: {} takes no user.* extended attributes: {}",
                    dir.display(),
                    io::Error::last_os_error()
                );
            }
            rc == 0
        }

        fn detect(&self, own: &str) -> Result<Delegated, String> {
            detect_from(&format!("0::{own}\n"), &self.mountinfo(), 0)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.mount);
        }
    }

    #[test]
    fn this_hybrid_machine_is_told_apart() {
        let cgroup = "4:memory:/x\n1:cpu:/\n0::/\n";
        let mountinfo = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        // No such folder here: reads as no controllers at all.
        let e = detect_from(cgroup, mountinfo, 0).unwrap_err();
        assert!(
            e.contains("/sys/fs/cgroup/unified has no memory and cpu"),
            "{e}"
        );
        let e = detect_from("4:memory:/x\n", mountinfo, 0).unwrap_err();
        assert!(e.contains("cgroup v1 only"), "{e}");
        let e = detect_from("0::/a\n", "24 1 8:1 / / rw - ext4 /dev/vda rw\n", 0).unwrap_err();
        assert!(e.contains("not mounted"), "{e}");

        let tree = Tree::new("hugetlb\n");
        let e = tree.detect("/sup.service/supervisor").unwrap_err();
        assert!(
            e.contains("(it has: hugetlb)") && e.contains("hybrid"),
            "{e}"
        );
    }

    #[test]
    fn a_delegated_cgroup_with_the_supervisor_in_a_leaf_is_used() {
        let tree = Tree::new("cpu memory io\n");
        let e = tree.detect("/sup.service/supervisor").unwrap_err();
        assert!(e.contains("is not delegated"), "{e}");
        if !tree.mark(&tree.service()) {
            return;
        }
        let found = tree.detect("/sup.service/supervisor").unwrap();
        assert_eq!(found.dir(), tree.service());

        // Controllers handed down once, then left alone.
        found.enable_controllers().unwrap();
        let control = tree.service().join("cgroup.subtree_control");
        assert_eq!(std::fs::read_to_string(&control).unwrap(), "+memory +cpu");
        std::fs::write(&control, "cpu memory\n").unwrap();
        found.enable_controllers().unwrap();
        assert_eq!(std::fs::read_to_string(&control).unwrap(), "cpu memory\n");

        // A job's cgroup with its limits; then its OOM kills; then it goes.
        let limits = CgroupLimits {
            memory_max_bytes: Some(64 << 20),
            cpu_max: Some(0.5),
        };
        std::fs::create_dir(tree.service().join("job-7-1")).unwrap();
        std::fs::write(tree.service().join("job-7-1/cgroup.procs"), "").unwrap();
        let job = found.create_job("job-7-1", &limits).unwrap();
        let read = |f: &str| std::fs::read_to_string(job.dir().join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(job.oom_kills(), 0);
        std::fs::write(
            job.dir().join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n",
        )
        .unwrap();
        assert_eq!(job.oom_kills(), 1);
        let dir = job.dir().to_path_buf();
        // A real cgroup's files go with it; the fake's are files of the test's own.
        for f in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        job.remove().unwrap();
        assert!(!dir.exists());

        // Only limits that are set; bad names are refused.
        std::fs::create_dir(tree.service().join("job-8-1")).unwrap();
        std::fs::write(tree.service().join("job-8-1/cgroup.procs"), "").unwrap();
        let job = found
            .create_job(
                "job-8-1",
                &CgroupLimits {
                    memory_max_bytes: None,
                    cpu_max: Some(2.0),
                },
            )
            .unwrap();
        assert_eq!(read_words(&job.dir().join("memory.max")), ["max"]);
        assert_eq!(read_words(&job.dir().join("cpu.max")), ["200000", "100000"]);
        for bad in ["", "..", "a/b"] {
            assert!(found.create_job(bad, &limits).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cgroup_that_cannot_hold_job_cgroups_says_why() {
        let tree = Tree::new("cpu memory\n");
        // The supervisor in the delegated cgroup itself.
        if !tree.mark(&tree.service()) {
            return;
        }
        let e = tree.detect("/sup.service").unwrap_err();
        assert!(e.contains("DelegateSubgroup"), "{e}");
        let e = tree.detect("/").unwrap_err();
        assert!(e.contains("root cgroup"), "{e}");
        // Processes of its own.
        std::fs::write(tree.service().join("cgroup.procs"), "4242\n").unwrap();
        let e = tree.detect("/sup.service/supervisor").unwrap_err();
        assert!(e.contains("processes of its own"), "{e}");
        std::fs::write(tree.service().join("cgroup.procs"), "").unwrap();
        // Controllers that are not handed to it.
        std::fs::write(tree.service().join("cgroup.controllers"), "pids\n").unwrap();
        let e = tree.detect("/sup.service/supervisor").unwrap_err();
        assert!(e.contains("(it has: pids)"), "{e}");
    }

    #[test]
    fn an_unprivileged_supervisor_owns_its_delegated_cgroup() {
        let tree = Tree::new("cpu memory\n");
        let uid = std::fs::metadata(tree.service()).unwrap().uid();
        let mine = detect_from(
            "0::/sup.service/supervisor\n",
            &tree.mountinfo(),
            uid.max(1),
        );
        if uid == 0 {
            // Owned by root: not delegated to uid 1.
            assert!(mine.is_err());
        } else {
            assert_eq!(mine.unwrap().dir(), tree.service());
        }
    }

    #[test]
    fn mountinfo_and_limits_are_read_as_the_kernel_writes_them() {
        let info = "1 0 0:1 / /a\\040b rw - cgroup2 none rw\n";
        let m = cgroup2_mount(info, "/x").unwrap();
        assert_eq!(m.dir, Path::new("/a b"));
        // A cgroup namespace's mount whose top is not the hierarchy's.
        let info = "1 0 0:1 /kube/pod1 /sys/fs/cgroup rw - cgroup2 none rw\n";
        assert!(cgroup2_mount(info, "/kube/pod1/c").is_some());
        assert!(cgroup2_mount(info, "/kube/pod10").is_none());
        assert_eq!(cpu_max_line(0.5), "50000 100000");
        assert_eq!(cpu_max_line(0.001), "1000 100000");
        assert_eq!(cpu_max_line(f64::NAN), "1000 100000");
        assert_eq!(oom_kills("oom 3\noom_kill 2\n"), 2);
        assert_eq!(oom_kills("garbage"), 0);
    }
}
