//! Users and groups from the system's databases (`getpwnam_r`, `getgrnam_r`,
//! `getgrouplist`, through nix): what a group's `user` and `group` keys name, resolved
//! to the ids the spawner switches a job to.
//!
//! Looked up in the process that loads the config, never in the cloned child of a spawn
//! (NSS may load modules, open sockets and allocate: nothing of that is allowed between
//! clone and exec).

use std::io;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, User};

/// The longest user or group name looked up: far beyond any real one (`useradd` keeps to
/// 32 bytes), so that a config cannot hand NSS an arbitrarily long string.
pub const MAX_NAME_BYTES: usize = 256;

/// A user's entry in the user database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    pub home: PathBuf,
}

/// Why a name could not be looked up (as opposed to: no such entry).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("not a name the user database can hold (empty, over {MAX_NAME_BYTES} bytes, or with a NUL byte)")]
    BadName,
    #[error("the lookup failed: {0}")]
    Failed(io::Error),
}

fn check_name(name: &str) -> Result<(), LookupError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains('\0') {
        return Err(LookupError::BadName);
    }
    Ok(())
}

/// The user called `name`; `Ok(None)` when the database has none.
pub fn lookup_user(name: &str) -> Result<Option<UserEntry>, LookupError> {
    check_name(name)?;
    let user = User::from_name(name).map_err(|e| LookupError::Failed(e.into()))?;
    Ok(user.map(|u| UserEntry {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
    }))
}

/// The id of the group called `name`; `Ok(None)` when the database has none.
pub fn lookup_group(name: &str) -> Result<Option<u32>, LookupError> {
    check_name(name)?;
    let group = Group::from_name(name).map_err(|e| LookupError::Failed(e.into()))?;
    Ok(group.map(|g| g.gid.as_raw()))
}

/// The supplementary groups `initgroups(user, gid)` would set: every group that lists
/// `user` as a member, and `gid` itself.
pub fn group_list(user: &str, gid: u32) -> Result<Vec<u32>, LookupError> {
    check_name(user)?;
    let name = std::ffi::CString::new(user).map_err(|_| LookupError::BadName)?;
    let groups = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
        .map_err(|e| LookupError::Failed(e.into()))?;
    let mut ids: Vec<u32> = groups.into_iter().map(Gid::as_raw).collect();
    // The order means nothing to the kernel (setgroups sorts its copy).
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_with_its_groups() {
        let root = lookup_user("root").unwrap().expect("every system has root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup_group("root").unwrap(), Some(0));
        assert!(group_list("root", 0).unwrap().contains(&0));
    }

    #[test]
    fn unknown_and_impossible_names() {
        assert_eq!(lookup_user("no-such-user-here-4242").unwrap(), None);
        assert_eq!(lookup_group("no-such-group-here-4242").unwrap(), None);
        for bad in ["", "a\0b", &"x".repeat(MAX_NAME_BYTES + 1)] {
            assert!(
                matches!(lookup_user(bad), Err(LookupError::BadName)),
                "{bad:?}"
            );
            assert!(
                matches!(lookup_group(bad), Err(LookupError::BadName)),
                "{bad:?}"
            );
        }
    }
}
