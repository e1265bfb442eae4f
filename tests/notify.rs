//! systemd readiness (`Type=notify`): READY=1 once running, RELOADING=1 then READY=1
//! around a reload, STOPPING=1 on the way out; children and jobs never see
//! NOTIFY_SOCKET.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::common::*;

/// The next datagram on `sock`, waiting up to `within`.
fn next(sock: &UnixDatagram, within: Duration) -> String {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {:?}: {e}", started.elapsed()));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn readiness_reload_and_stop_are_notified_to_systemd() {
    let sb = Sandbox::new(&json!({"groups": [{"name": "a", "max_workers": 1}]}));
    let path = sb.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut sv = sb.start_with_env(&[], &[("NOTIFY_SOCKET", &path)]);
    let t = Duration::from_secs(10);

    let ready = next(&sock, t);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.lines().any(|l| l == format!("MAINPID={}", sv.pid())),
        "{ready}"
    );

    // A job's environment has no NOTIFY_SOCKET (nor has its worker's).
    let id = sb.submit(&[
        "--group",
        "a",
        "--",
        "sh",
        "-c",
        "echo \"[$NOTIFY_SOCKET]\"",
    ]);
    let job = sb.wait_job(id, &["succeeded"], t);
    let log = std::fs::read_to_string(job["log"].as_str().unwrap()).unwrap();
    assert_eq!(log, "[]\n");

    sv.signal(Signal::SIGHUP);
    let reloading = next(&sock, t);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading.rsplit('=').next().unwrap().parse().unwrap();
    assert!(usec > 0, "{reloading}");
    assert!(next(&sock, t).starts_with("READY=1"));

    sv.signal(Signal::SIGTERM);
    assert_eq!(next(&sock, t), "STOPPING=1");
    assert_eq!(sv.wait_exit(t), Some(0));
    sv.assert_nothing_left(Duration::from_secs(2));
}

#[test]
fn an_abstract_notify_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let sb = Sandbox::new(&json!({"groups": [{"name": "a", "max_workers": 1}]}));
    let name = format!("sv-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let at = std::path::PathBuf::from(format!("@{name}"));
    let mut sv = sb.start_with_env(&[], &[("NOTIFY_SOCKET", &at)]);
    assert!(next(&sock, Duration::from_secs(10)).starts_with("READY=1"));
    sv.signal(Signal::SIGTERM);
    assert_eq!(sv.wait_exit(Duration::from_secs(10)), Some(0));
    sv.assert_nothing_left(Duration::from_secs(2));
}
