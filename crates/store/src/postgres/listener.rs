//! [`Listener`]: the doorbell of supervisors on a shared PostgreSQL queue.

use std::time::Duration;

use postgres::Client;

use super::NOTIFY_CHANNEL;
use crate::error::Context;
use crate::Result;

/// A connection that waits for `submit` and `cancel` on a
/// [`PostgresStore`](crate::PostgresStore)'s database (`LISTEN supervisor_jobs`): the
/// doorbell of a grabber whose jobs may come from any host, and of a supervisor whose
/// running job may be canceled from any host (it then looks at
/// [`JobStore::cancel_requests`](crate::JobStore::cancel_requests)).
///
/// Only what may give a claimer work or a supervisor a cancel rings: a submit that queued
/// a new job (not one whose keys all named live jobs), a cancel of a queued, waiting or
/// running job. Anyone may also ring with `NOTIFY supervisor_jobs`.
///
/// Notifications that arrive while nobody waits are kept until the next
/// [`wait`](Listener::wait). A listener whose connection broke fails every `wait`: make a
/// new one (and poll the store once, since notifications sent meanwhile are lost).
pub struct Listener {
    pub(super) client: Client,
    pub(super) url: String,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("url", &self.url)
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Waits up to `timeout` for a notification. Returns true when at least one came (all
    /// that have come are consumed, so that a burst of submits wakes once), false when
    /// the time ran out. Fails if the connection is lost.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        let op = "wait for a notification";
        use postgres::fallible_iterator::FallibleIterator;
        let first = self
            .client
            .notifications()
            .timeout_iter(timeout)
            .next()
            .ctx(op)?;
        if first.is_some() {
            // One round trip (LISTEN again, which changes nothing): the server sends
            // every notification committed before it ahead of the answer, so a burst
            // that has already committed wakes once.
            self.client
                .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
                .ctx(op)?;
            let mut notifications = self.client.notifications();
            while notifications.iter().next().ctx(op)?.is_some() {}
        }
        if first.is_none() && self.client.is_closed() {
            // The iterator ends quietly when the server goes away: say so.
            self.client.check_connection().ctx(op)?;
        }
        Ok(first.is_some())
    }

    /// The connection string, its password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }
}
