//! Another "host" on this machine, and a network to it that a test can partition by
//! dropping every packet: a black hole, as a real partition is. (The loopback proxy of
//! `proxy.rs` cannot be one: its kernel acknowledges whatever the client sends, so a
//! client's connection never times out; its `cut` closes connections instead.)
//!
//! The other host is a network and UTS namespace of its own, with a hostname of its own
//! (supervisors take one of another host for dead by its silence, not by its pid), held
//! by a process that waits on its stdin. It reaches the test server only through a veth
//! pair to a relay: this test binary run again in a third network namespace
//! ([`relay_process`]), which forwards each TCP connection to the server's unix socket
//! (whose path works from any network namespace). [`Network::cut`] takes the relay's end
//! of the pair down: the other host's end keeps its address, its route and a permanent
//! neighbour entry (so no failed ARP reports the relay unreachable), and whatever it
//! sends is dropped without a word: established connections hang until TCP gives up on
//! them, new ones until their connect timeout. [`Network::heal`] brings it back up.

use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::wait_until;

const RELAY_SOCKET: &str = "SUPERVISOR_TEST_RELAY_SOCKET";
const RELAY_READY: &str = "SUPERVISOR_TEST_RELAY_READY";

/// The relay's address, as the other host sees it.
const RELAY_ADDR: &str = "10.99.0.1";
const HOST_ADDR: &str = "10.99.0.2";
const RELAY_MAC: &str = "02:00:00:00:99:01";
const HOST_MAC: &str = "02:00:00:00:99:02";

/// The other host and the network to it; both gone on drop.
pub struct Network {
    // Dropped in this order: the host, then the relay (their namespaces, and the veth
    // pair, go with the last process in them), then the directory.
    host: Reaped,
    relay: Reaped,
    _dir: tempfile::TempDir,
}

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Network {
    /// A host named `hostname` whose only way to the server (whose unix socket is
    /// `socket`) is through the relay. `Err` says why this machine cannot make one
    /// (namespaces not permitted, no `ip`): the caller skips its test.
    pub fn new(socket: &Path, hostname: &str) -> Result<Network, String> {
        for (tool, args) in [
            ("unshare", &["--uts", "--net", "true"][..]),
            ("nsenter", &["--version"][..]),
            ("ip", &["-V"][..]),
        ] {
            let ok = Command::new(tool)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "`{tool} {}` fails here: network and UTS namespaces need root \
                     (or CAP_SYS_ADMIN) and iproute2",
                    args.join(" ")
                ));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("sv-net-")
            .tempdir()
            .unwrap();
        let ready = dir.path().join("relay.ready");
        let relay = Reaped(
            Command::new("unshare")
                .args(["--net", "--"])
                .arg(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "postgres::partition::relay_process",
                    "--include-ignored",
                    "--nocapture",
                    "--test-threads=1",
                    "-q",
                ])
                .env(RELAY_SOCKET, socket)
                .env(RELAY_READY, &ready)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("relay.stderr")).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_until(Duration::from_secs(10), || ready.exists()).unwrap_or_else(|_| {
            panic!(
                "the relay never listened: {}",
                std::fs::read_to_string(dir.path().join("relay.stderr")).unwrap_or_default()
            )
        });
        // The host: its own hostname, loopback, its end of the pair (and the relay's end,
        // in the relay's namespace); then it holds its namespaces until its stdin closes.
        let host_ready = dir.path().join("host.ready");
        let script = format!(
            "set -e
             hostname \"$1\"
             ip link set lo up
             ip link add vb address {HOST_MAC} type veth peer name va address {RELAY_MAC} \
               netns \"$2\"
             ip addr add {HOST_ADDR}/24 dev vb
             ip link set vb up
             ip neigh replace {RELAY_ADDR} lladdr {RELAY_MAC} dev vb nud permanent
             nsenter --net=/proc/$2/ns/net sh -c \
               'ip link set lo up && ip addr add {RELAY_ADDR}/24 dev va && ip link set va up'
             : > \"$3\"
             exec cat"
        );
        let mut host = Reaped(
            Command::new("unshare")
                .args(["--uts", "--net", "--", "sh", "-c", &script, "sh"])
                .arg(hostname)
                .arg(relay.0.id().to_string())
                .arg(&host_ready)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("host.stderr")).unwrap())
                .spawn()
                .unwrap(),
        );
        let _ = wait_until(Duration::from_secs(10), || {
            host_ready.exists() || host.0.try_wait().unwrap().is_some()
        });
        if !host_ready.exists() {
            panic!(
                "cannot set up the other host: {}",
                std::fs::read_to_string(dir.path().join("host.stderr")).unwrap_or_default()
            );
        }
        Ok(Network {
            host,
            relay,
            _dir: dir,
        })
    }

    /// The URL of database `db` as the other host reaches it: through the relay, with the
    /// store's own timeouts (no `connect_timeout` of the test's choosing).
    pub fn url(&self, db: &str) -> String {
        format!("host={RELAY_ADDR} port=5432 user=postgres dbname={db}")
    }

    /// `program` to be run on the other host (`nsenter` execs it: same pid).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.host.0.id().to_string())
            .args(["--net", "--uts", "--"])
            .arg(program);
        cmd
    }

    /// The partition: from now on every packet between the host and the relay is lost.
    pub fn cut(&self) {
        self.relay_ip(&["link", "set", "va", "down"]);
    }

    /// The end of the partition.
    pub fn heal(&self) {
        self.relay_ip(&["link", "set", "va", "up"]);
    }

    fn relay_ip(&self, args: &[&str]) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.relay.0.id()))
            .arg("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?} in the relay's namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Not a test: the relay that [`Network::new`] runs in a network namespace of its own
/// (does nothing without its variables). It forwards each connection to
/// `0.0.0.0:5432` there to the server's unix socket, and exits when its stdin closes
/// (the test is done, or died).
#[test]
#[ignore = "not a test: the relay process of postgres::partition::Network"]
fn relay_process() {
    let (Some(socket), Some(ready)) = (
        std::env::var_os(RELAY_SOCKET),
        std::env::var_os(RELAY_READY),
    ) else {
        return;
    };
    let listener = TcpListener::bind("0.0.0.0:5432").unwrap();
    std::fs::write(ready, "").unwrap();
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(server) = UnixStream::connect(&socket) else {
            continue;
        };
        crate::common::proxy::pump(client.try_clone().unwrap(), server.try_clone().unwrap());
        crate::common::proxy::pump(server, client);
    }
}
