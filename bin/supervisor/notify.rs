//! systemd's readiness protocol (`sd_notify`), for a unit with `Type=notify`: when
//! `NOTIFY_SOCKET` is set, the supervisor says READY=1 once it runs, RELOADING=1 and
//! READY=1 around each reload, and STOPPING=1 when it starts to stop. Without the
//! variable every call is a no-op. Children never see the variable (see `ipc.rs`).

use std::os::unix::net::UnixDatagram;

pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Read `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let addr = address(name.as_encoded_bytes())?;
            let sock = UnixDatagram::unbound().ok()?;
            Some((sock, addr))
        });
        Notifier { socket }
    }

    /// Send one state message; failures are logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                log::warn!("cannot notify systemd ({state:?}): {e}");
            }
        }
    }

    pub fn ready(&self) {
        self.send(&format!("READY=1\nMAINPID={}", std::process::id()));
    }

    pub fn reloading(&self) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
            .unwrap_or(0);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

fn address(name: &[u8]) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match name {
        [] => None,
        [b'@', rest @ ..] => std::os::unix::net::SocketAddr::from_abstract_name(rest).ok(),
        path => {
            use std::os::unix::ffi::OsStrExt;
            std::os::unix::net::SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path)).ok()
        }
    }
}
