//! Opening a connection to PostgreSQL with our defaults: how long to wait for a silent
//! server ([`Patience`]), keepalives on both sides, and TLS as the URL's `sslmode` asks.

use std::str::FromStr;
use std::time::Duration;

use postgres::{Client, Config, NoTls};

use super::tls::connector;
use crate::{Result, StoreError};
use supervisor_config::postgres_url::{tls_settings, Tls};

/// How long a connection waits for a server that does not answer: to connect, when the
/// URL sets no `connect_timeout`, and for data sent to be acknowledged (TCP's user
/// timeout; a slow query is not that: the server's kernel acknowledges at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// 10 s: verbs, the grabber, the doorbell's listener.
    Normal,
    /// 3 s: the supervisor's own loop and its lease, which must never stall long
    /// behind a server gone silent (a partition): its children's heartbeats, and the
    /// events that say it fenced itself, wait for it.
    Short,
}

impl Patience {
    fn timeout(self) -> Duration {
        match self {
            Patience::Normal => Duration::from_secs(10),
            Patience::Short => Duration::from_secs(3),
        }
    }
}

/// Opens a connection with our defaults: a connect timeout and an application name, when
/// the URL sets none.
pub(super) fn open_client(url: &str, shown: &str, patience: Patience) -> Result<Client> {
    let connect_err = |source| StoreError::Connect {
        url: shown.to_owned(),
        source,
    };
    let tls_err = |message: String| StoreError::Tls {
        url: shown.to_owned(),
        message,
    };
    let (url, tls) = tls_settings(url).map_err(tls_err)?;
    let mut config = Config::from_str(&url).map_err(connect_err)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(patience.timeout());
    }
    if config.get_application_name().is_none() {
        config.application_name("supervisor");
    }
    // A server that vanished without closing the connection (a partition dropping
    // packets, a host gone) must turn into an error in seconds, not in TCP's quarter of
    // an hour: unacknowledged data fails the connection after its patience, and an
    // idle one is probed.
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(patience.timeout());
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
    }
    // And the server's side of it: a partition that falls in the middle of one of our
    // transactions must not leave its row locks (our instance's among them, which
    // another supervisor's takeover waits for) held until the server's TCP gives up,
    // two hours by default. The server ends such a session after 10 s idle in its
    // transaction, and probes an idle connection as we do.
    let server_side = "-c idle_in_transaction_session_timeout=10000 \
                       -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 \
                       -c tcp_keepalives_count=3 -c tcp_user_timeout=10000";
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{server_side} {theirs}"),
        _ => server_side.to_owned(),
    };
    config.options(&options);
    match tls {
        Tls::Disable => config
            .ssl_mode(postgres::config::SslMode::Disable)
            .connect(NoTls)
            .map_err(connect_err),
        tls => {
            config.ssl_mode(match tls {
                Tls::Prefer => postgres::config::SslMode::Prefer,
                _ => postgres::config::SslMode::Require,
            });
            config
                .connect(connector(&tls).map_err(tls_err)?)
                .map_err(connect_err)
        }
    }
}
