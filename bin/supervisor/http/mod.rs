//! The HTTP server inside `supervisor run` (config `http`, off without it): the JSON API
//! of the contract's "HTTP" section, Server-Sent Events of the events file, Prometheus
//! metrics at `/metrics` and the dashboard at `/`.
//!
//! It never stalls the supervision loop. The loop's only part in it is the events file's
//! tap (an unbounded channel send per event) and, on a reload, the new config. Everything
//! else runs on threads of its own:
//!
//! - the **feed** thread ([`feed`]) takes each event from the tap, keeps the child table
//!   (the same [`Replay`](crate::commands::Replay) as `status`) and the metrics' counters,
//!   and broadcasts the line to the event streams;
//! - the **http** thread runs axum on a one-thread tokio runtime ([`api`]); reads and
//!   writes of the store run on a few blocking threads, each with its own store
//!   connection, through the same functions as the verbs (`status`, `jobs`, `job`,
//!   `logs`, `submit`, `cancel`, `retry`, `pause`, `resume`, `reload`).
//!
//! Reads are open when it listens on a loopback address (where only this host's users
//! reach it); elsewhere, and for every write, the bearer token of `http.token_file` is
//! needed ([`auth`]).

mod api;
mod assets;
mod auth;
mod conn;
mod feed;
mod metrics;
mod stream;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::{Context, Result};
use supervisor_config::{Config, HttpConfig};

use crate::events_file::EventsFile;

pub use feed::Feed;

/// The running server: the feed the supervisor tells of reloads.
#[derive(Debug)]
pub struct Server {
    feed: Arc<Feed>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config's `http` cannot be used as it is (an unreadable token file): exit 2.
    #[error("{0}")]
    Config(String),
    /// Anything else (the address is taken, no threads): exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Server {
    /// Start the server `config.http` asks for, if any, tapping `events`: it listens
    /// before this returns, and its address is written to `<state_dir>/http.addr`.
    pub fn start(config: &Config, events: &mut EventsFile) -> Result<Option<Server>, StartError> {
        let Some(http) = &config.http else {
            return Ok(None);
        };
        // Read once now so that a bad token file stops the start; read again at every
        // request that needs it, so that it can be changed without a restart.
        http.read_token().map_err(StartError::Config)?;
        let listener = TcpListener::bind(http.listen)
            .with_context(|| format!("http.listen: cannot listen on {}", http.listen))?;
        listener.set_nonblocking(true).context("http.listen")?;
        let addr = listener.local_addr().context("http.listen")?;
        write_addr(config, addr)?;

        let (tap_tx, tap_rx) = crossbeam_channel::unbounded();
        let feed = Feed::start(config.clone(), tap_rx)?;
        events.set_tap(tap_tx);

        let app = api::App::new(feed.clone(), http.clone());
        std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                if let Err(e) = api::serve(listener, app) {
                    log::error!("the HTTP server stopped: {e:#}");
                }
            })
            .context("cannot start the HTTP thread")?;
        let scheme_note = if http.token_file.is_some() {
            "writes need the token of http.token_file"
        } else {
            "read-only: no http.token_file"
        };
        eprintln!("supervisor: http: listening on http://{addr}/ ({scheme_note})");
        Ok(Some(Server { feed }))
    }

    /// The supervisor runs on a new config (a reload was accepted).
    pub fn config_changed(&self, config: &Config) {
        self.feed.set_config(config.clone());
    }
}

/// `<state_dir>/http.addr`: where the server listens (its port, when `listen` asked for
/// any free one), for scripts and tests.
fn write_addr(config: &Config, addr: SocketAddr) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config.state_dir.join("http.addr");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{addr}"))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Whether `http` lets anyone who can connect read.
fn reads_are_open(http: &HttpConfig) -> bool {
    http.is_loopback()
}
