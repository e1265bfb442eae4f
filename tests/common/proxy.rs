//! A TCP proxy on loopback in front of the test PostgreSQL server (which listens on a
//! unix socket), that a test can cut: every connection through it closed and new ones
//! refused, as when the server restarts, until it is restored.
//!
//! A cut closes: the client gets a FIN on each connection (and an RST for whatever it
//! sends after), and each new connection is accepted and closed at once, so every call
//! fails fast. It is not a partition that drops packets: this proxy cannot be one, since
//! its kernel acknowledges whatever the client sends. `partition.rs` makes that one.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy to the server whose unix socket is in `socket_dir`, for `port`.
    pub fn start(socket_dir: &str, port: &str) -> Proxy {
        let target = PathBuf::from(socket_dir).join(format!(".s.PGSQL.{port}"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (up2, conns2, stop2) = (up.clone(), conns.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both); // refused, as a down server
                    continue;
                }
                let Ok(server) = UnixStream::connect(&target) else {
                    continue;
                };
                conns2.lock().unwrap().push(client.try_clone().unwrap());
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        Proxy {
            port,
            up,
            conns,
            stop,
        }
    }

    /// The URL of database `db` through the proxy.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=2",
            self.port
        )
    }

    /// As a server restart: every connection closed, new ones refused until [`restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

/// Copies `from` to `to` on a thread of its own until either side closes, then closes
/// both (in one direction; a connection has two of these).
pub fn pump<A, B>(mut from: A, mut to: B)
where
    A: Read + Close + Send + 'static,
    B: Write + Close + Send + 'static,
{
    thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        to.close();
        from.close();
    });
}

/// Both ends of a socket, shut.
pub trait Close {
    fn close(&self);
}

impl Close for TcpStream {
    fn close(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Close for UnixStream {
    fn close(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}
