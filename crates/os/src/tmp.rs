//! Where the supervisor's short-lived handshake sockets go.
//!
//! Every child's start creates a directory holding one Unix socket (ipc-channel's
//! one-shot server) and removes both once the child has connected. On the ext4 root
//! of these machines, those four inode operations cost about 0.1 ms of CPU a child
//! (`perf`, `scripts/bench workers`); in memory they cost a few microseconds.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, TMPFS_MAGIC};
use nix::unistd::{access, AccessFlags};

/// A memory-backed directory for the handshake sockets, if one is at hand and the
/// operator has not chosen a temporary directory (`TMPDIR`, which is then kept):
/// `$XDG_RUNTIME_DIR` (the user's own), else `/dev/shm`. A candidate must be an
/// absolute path to a directory on tmpfs that we can write to, and either ours and
/// closed to others, or sticky (so that no other user can remove what we put there;
/// the socket's own directory is created `0700`).
pub fn memory_temp_dir() -> Option<PathBuf> {
    if std::env::var_os("TMPDIR").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    runtime
        .into_iter()
        .chain([PathBuf::from("/dev/shm")])
        .find(|dir| usable(dir))
}

fn usable(dir: &Path) -> bool {
    if !dir.is_absolute() {
        return false;
    }
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let mode = meta.permissions().mode();
    let ours_and_closed = meta.uid() == nix::unistd::geteuid().as_raw() && mode & 0o022 == 0;
    let sticky = mode & 0o1000 != 0;
    meta.is_dir()
        && (ours_and_closed || sticky)
        && statfs(dir).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
        && access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_tmpfs(dir: &Path) -> bool {
        statfs(dir).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
    }

    #[test]
    fn only_a_writable_tmpfs_directory_closed_to_others_will_do() {
        assert!(!usable(Path::new("relative/dir")));
        assert!(!usable(Path::new("/nonexistent/surely")));
        let src = Path::new(env!("CARGO_MANIFEST_DIR"));
        if !on_tmpfs(src) {
            assert!(!usable(src), "a directory on disk");
        }
        let shm = Path::new("/dev/shm");
        if !on_tmpfs(shm) {
            return; // nothing more to try on this machine
        }
        let dir = shm.join(format!("sv-tmp-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"").unwrap();
        let mine = usable(&dir);
        let a_file = usable(&file);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let open_to_all = usable(&dir);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let sticky = usable(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(mine, "ours, 0700, on tmpfs");
        assert!(!a_file, "a file");
        assert!(!open_to_all, "writable by others and not sticky");
        assert!(sticky, "sticky, as /dev/shm is");
    }
}
