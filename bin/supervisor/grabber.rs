//! The grabber child: claims jobs from the store against the credits the supervisor
//! grants (one per free worker slot; no prefetch) and routes them to groups.
//!
//! This file is plumbing around three pieces of the core: the credits, epochs and
//! runnable groups the supervisor sends are kept in a [`Ledger`], which says what to claim;
//! the loop is buildbot's doorbell loop ([`DoorbellLoop`], one pass over the store as its
//! processing function): a submit, a cancel, a returned credit or a new config rings it,
//! and rings coalesce into one pass; and each pass is woken again when oslo's backoff
//! looping call ([`BackoffSchedule`]) says: at the next poll interval (sooner when a job's
//! retry falls due), or after an error backoff that grows while the store fails.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use supervisor_core::backoff::Backoff;
use supervisor_core::doorbell::{Call, DoorbellLoop, PassResult};
use supervisor_core::ledger::Ledger;
use supervisor_core::looping::BackoffSchedule;
use supervisor_core::time::Clock;
use supervisor_core::{SplitMix64, Time};
use supervisor_store::Route;

use crate::events_file::wall_now;
use crate::ipc;
use crate::wire::{ClaimReport, FromChild, PassItem, StoreArg, ToChild};

/// The most findings of a pass in one message.
const PASS_ITEMS: usize = 64;

/// About the most bytes of findings in one message (one claim may hold 1 MiB of command
/// and environment, and always goes).
const PASS_BYTES: usize = 1 << 20;

/// About how many bytes a finding takes on the wire.
fn item_bytes(item: &PassItem) -> usize {
    match item {
        PassItem::Claimed(c) => {
            64 + c.group.len()
                + c.command.iter().map(|a| a.len() + 2).sum::<usize>()
                + c.env
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 4)
                    .sum::<usize>()
                + c.cwd.as_ref().map_or(0, String::len)
        }
        PassItem::Refused { reason, .. } => 32 + reason.len(),
        PassItem::CancelRequested { .. }
        | PassItem::SourceReport { .. }
        | PassItem::Settled { .. } => 16,
    }
}

/// The grabber's clock: time since it started.
#[derive(Clone, Copy, Debug)]
struct Monotonic(Instant);

impl Clock for Monotonic {
    fn now(&self) -> Time {
        Time::from_origin(self.0.elapsed())
    }
}

struct Grabber {
    tx: ipc_channel::ipc::IpcSender<FromChild>,
    store_arg: StoreArg,
    store: Option<crate::store::Store>,
    instance: i64,
    clock: Monotonic,
    /// When the next pass is due: the poll interval, or the error backoff.
    schedule: BackoffSchedule<SplitMix64>,
    routes: Vec<Route>,
    /// What the supervisor granted, revoked and asked for.
    ledger: Ledger,
    cancels_sent: BTreeSet<i64>,
    /// Look for cancel requests in the next pass: set by the doorbell (`cancel` rings
    /// it) and by the poll timer, not by every returned credit.
    check_cancels: bool,
    /// The routes changed (or this grabber just started): decide the group of every job
    /// in the queue again, once, before the next claim, a step a pass (the id the next
    /// step starts after).
    reroute: Option<i64>,
    /// How long a pass may spend on a reroute before it lets the loop answer the
    /// supervisor (the rest is for the next pass): the store's wait, a quarter of the
    /// heartbeat timeout.
    reroute_budget: Duration,
    /// Outcomes the supervisor handed over with its grants, stored by the next pass
    /// with its claim (in one transaction), or given back to the supervisor by a pass
    /// that fails (`SourceFailed`: it stores every outcome it handed over and was not
    /// told of).
    settle: Vec<supervisor_store::Settle>,
    /// The wall time of the current (or last) pass's claim, which is every claimed
    /// job's `started_at`: a claim it made that was lost with the connection is no
    /// later than this.
    pass_began: f64,
}

/// What a message from the supervisor asks of the loop.
enum Flow {
    /// Run a pass (a credit, a poll, a submit's doorbell).
    Ring,
    /// Nothing more.
    Quiet,
    /// Stop the grabber.
    Stop,
}

/// Run the grabber until told to stop or the supervisor goes away.
pub fn main(
    store_wait_s: f64,
    ipc_name: &str,
    store: StoreArg,
    instance: i64,
    poll_interval_s: f64,
    error_backoff: Backoff,
    routes: Vec<Route>,
) -> i32 {
    supervisor_store::set_busy_timeout(supervisor_core::bounds::duration(store_wait_s));
    let (tx, rx) = match ipc::connect(ipc_name) {
        Ok(x) => x,
        Err(e) => {
            log::error!("grabber: cannot connect to the supervisor: {e}");
            return 1;
        }
    };
    let clock = Monotonic(Instant::now());
    let rng = SplitMix64::new(u64::from(std::process::id()) ^ (wall_now() * 1e6) as u64);
    let poll_interval = supervisor_core::bounds::duration(poll_interval_s);
    let mut g = Grabber {
        tx,
        store_arg: store,
        store: None,
        instance,
        clock,
        schedule: BackoffSchedule::new(poll_interval, error_backoff, rng),
        routes,
        ledger: Ledger::new(),
        cancels_sent: BTreeSet::new(),
        check_cancels: true,
        reroute: Some(0),
        reroute_budget: supervisor_core::bounds::duration(store_wait_s),
        settle: Vec::new(),
        pass_began: 0.0,
    };
    if g.tx.send(FromChild::Ready).is_err() {
        return 1;
    }
    let mut bell = DoorbellLoop::new(Duration::from_millis(1));
    bell.add("claim", Grabber::pass);
    bell.ring();
    loop {
        bell.run_due(&clock, &mut g);
        let msg = match bell.next_deadline() {
            Some(t) => match rx.try_recv_timeout(t.saturating_since(clock.now())) {
                Ok(m) => Some(m),
                Err(ipc_channel::TryRecvError::Empty) => None,
                Err(_) => return 0, // the supervisor is gone
            },
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return 0,
            },
        };
        // Take everything already queued before running a pass: rings coalesce.
        let mut next = msg;
        while let Some(msg) = next.take() {
            match g.on_message(msg) {
                Flow::Ring => bell.ring(),
                Flow::Quiet => {}
                Flow::Stop => return 0,
            }
            next = rx.try_recv().ok();
        }
    }
}

impl Grabber {
    fn on_message(&mut self, msg: ToChild) -> Flow {
        match msg {
            ToChild::Ping => {
                if self.tx.send(FromChild::Pong).is_err() {
                    return Flow::Stop;
                }
                Flow::Quiet
            }
            ToChild::Stop => Flow::Stop,
            ToChild::Settings(s) => {
                if self.routes != s.routes {
                    self.reroute = Some(0);
                }
                self.routes = s.routes;
                self.ledger.set_runnable(s.runnable);
                let poll_interval = supervisor_core::bounds::duration(s.poll_interval_s);
                self.schedule.set_interval(poll_interval);
                self.schedule.set_backoff(s.error_backoff.into());
                Flow::Ring
            }
            ToChild::Grant {
                group,
                n,
                epoch,
                poll,
                settle,
            } => {
                for s in settle {
                    if crate::wire::sound_settle(&s) {
                        self.settle.push(s);
                    } else {
                        log::error!(
                            "grabber: an outcome of job {} with a time not finite; not storing it",
                            s.job
                        );
                    }
                }
                if let Some(poll) = poll {
                    self.ledger.poll(poll);
                }
                self.ledger.grant(&group, n, epoch);
                Flow::Ring
            }
            ToChild::Revoke { group, epoch } => {
                self.ledger.revoke(&group, epoch);
                Flow::Quiet
            }
            ToChild::Poll { epoch } => {
                self.ledger.poll(epoch);
                Flow::Ring
            }
            ToChild::Wake => {
                self.check_cancels = true;
                Flow::Ring
            }
            ToChild::Hold(on) => {
                self.ledger.hold(on);
                Flow::Ring
            }
            ToChild::Run(_) | ToChild::SignalJob { .. } => {
                log::error!("grabber: got a worker's message; ignoring it");
                Flow::Quiet
            }
        }
    }

    /// One pass, the doorbell loop's processing function: claim what the credits allow,
    /// pass on cancel requests, report; the schedule says when the next is due.
    fn pass(&mut self, call: Call) -> PassResult {
        if !call.rung {
            self.check_cancels = true; // the poll timer
        }
        let next = match self.try_pass() {
            Ok(asked) => self.schedule.succeeded(self.clock.now(), asked),
            Err(e) => {
                let now = self.clock.now();
                let next = self.schedule.failed(now);
                log::warn!(
                    "grabber: store error: {e:#}; next try in {:.2}s",
                    next.saturating_since(now).as_secs_f64()
                );
                let _ = self.tx.send(FromChild::SourceFailed {
                    error: format!("{e:#}"),
                    claimed_before: self.pass_began,
                });
                // Reconnect on the next try: the connection itself may be what broke.
                self.store = None;
                self.ledger.forget_report();
                // The supervisor stores them itself when it hears of the failure.
                self.settle.clear();
                next
            }
        };
        Ok(Some(next))
    }

    /// Send what a pass found, in as few messages as [`PASS_ITEMS`] and [`PASS_BYTES`]
    /// allow, so that no message (and no turn of the supervisor's loop) grows with the
    /// number of workers or the size of their jobs. Claims committed must reach the
    /// supervisor: if it is gone, so is our reason to run.
    fn send_found(tx: &ipc_channel::ipc::IpcSender<FromChild>, found: Vec<PassItem>) {
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut items = found.into_iter().peekable();
        while let Some(item) = items.next() {
            bytes += item_bytes(&item);
            batch.push(item);
            let full = batch.len() >= PASS_ITEMS
                || items
                    .peek()
                    .is_some_and(|next| bytes + item_bytes(next) > PASS_BYTES);
            if (full || items.peek().is_none())
                && tx
                    .send(FromChild::Pass(std::mem::take(&mut batch)))
                    .is_err()
            {
                std::process::exit(0);
            }
            if full {
                bytes = 0;
            }
        }
    }

    /// Claim, pass on cancels and report; returns how soon the next pass is wanted when
    /// that is before the poll interval (a job's retry falls due).
    fn try_pass(&mut self) -> anyhow::Result<Option<Duration>> {
        if self.store.is_none() {
            self.store = Some(crate::store::open_hot(&self.store_arg)?);
        }
        self.pass_began = wall_now();
        let store = self.store.as_mut().expect("opened above");
        // Taken now: if the pass fails, the supervisor stores them itself.
        let settle = std::mem::take(&mut self.settle);
        let routed = self.routes.iter().map(|r| r.group.as_str());
        let Some(mut credits) = self.ledger.to_claim(routed) else {
            // Held: no claim, but the outcomes are stored all the same.
            let stored = store.settle(&settle)?;
            Self::send_found(&self.tx, settled(&settle, &stored));
            return Ok(None);
        };
        if let Some(mut after) = self.reroute {
            let (until, mut changed) = (Instant::now() + self.reroute_budget, 0);
            self.reroute = loop {
                // PostgreSQL reroutes in one transaction: a reroute split in several
                // (even two) left dispatch a quarter slower for the whole run after it
                // (100,000 tagged jobs: 634-671 jobs/s against 835-922 in one; cause
                // not found), and it routes 100,000 jobs in ~0.8 s.
                let chunk = match self.store_arg {
                    StoreArg::Postgres(_) => u32::MAX,
                    StoreArg::Sqlite(_) => supervisor_store::REROUTE_CHUNK,
                };
                let step = store.reroute_from(&self.routes, after, chunk)?;
                changed += step.changed;
                match step.next {
                    Some(next) if Instant::now() < until => after = next,
                    next => break next,
                }
            };
            if changed > 0 {
                log::info!("grabber: {changed} queued job(s) routed to another group");
            }
            if self.reroute.is_some() {
                // More to go: no claim until the queue is done (one now could start a
                // job in a group that no longer takes it). The outcomes are stored, and
                // the next step comes at once, after the messages that wait (a ping).
                let stored = store.settle(&settle)?;
                Self::send_found(&self.tx, settled(&settle, &stored));
                return Ok(Some(Duration::ZERO));
            }
        }
        // The claim's time is the pass's: a claim of this pass whose answer is lost
        // with the connection has `started_at` = `pass_began`, which `SourceFailed`
        // reports, and the supervisor gives back what was claimed then or before.
        // (Taken anew here, its claims were later than what was reported, and such a
        // claim stayed running under us for good.)
        self.pass_began = wall_now();
        let wall = self.pass_began;
        let (stored, result) =
            store.settle_and_claim(&settle, self.instance, &self.routes, &mut credits, wall)?;
        let empty = result.jobs.is_empty() && result.more.is_empty();
        let retry = result.more.waiting_until;
        // What the pass found goes in one message, in this order (see `send_found`): the
        // outcomes stored first, so that a job's end is written before its next start.
        let mut found = settled(&settle, &stored);
        for r in result.refused {
            found.push(PassItem::Refused {
                job: r.id,
                attempts: r.attempts,
                reason: r.reason,
            });
        }
        for job in result.jobs {
            let epoch = self.ledger.spend(&job.group);
            found.push(PassItem::Claimed(ClaimReport {
                id: job.id,
                group: job.group,
                attempt: job.attempt,
                timeout_s: job.timeout_s,
                max_attempts: job.max_attempts,
                epoch,
                command: job.command,
                env: job.env,
                cwd: job.cwd,
            }));
        }
        if std::mem::take(&mut self.check_cancels) {
            // The claims are committed: they go before another query can fail or wait
            // (a pass that a credit rang, the common one, asks nothing more).
            Self::send_found(&self.tx, std::mem::take(&mut found));
            let requests = store.cancel_requests(self.instance)?;
            let requested: BTreeSet<i64> = requests.iter().map(|(id, _)| *id).collect();
            for id in requested.difference(&self.cancels_sent) {
                found.push(PassItem::CancelRequested { job: *id });
            }
            self.cancels_sent = requested;
        }
        if let Some(epoch) = self.ledger.report(empty) {
            found.push(PassItem::SourceReport { epoch, empty });
        }
        Self::send_found(&self.tx, found);
        Ok(retry.map(|at| supervisor_core::bounds::duration(at - wall)))
    }
}

/// What the supervisor hears of the outcomes a pass stored.
fn settled(
    settle: &[supervisor_store::Settle],
    settled: &[supervisor_store::Settled],
) -> Vec<PassItem> {
    (settle.iter().zip(settled))
        .map(|(o, settled)| PassItem::Settled {
            job: o.job,
            attempt: o.attempt,
            settled: *settled,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_channel::ipc;
    use std::collections::BTreeMap;

    fn claim(id: i64, command_bytes: usize) -> PassItem {
        PassItem::Claimed(ClaimReport {
            id,
            group: "g".into(),
            attempt: 1,
            timeout_s: None,
            max_attempts: None,
            epoch: 1,
            command: vec!["x".repeat(command_bytes)],
            env: BTreeMap::new(),
            cwd: None,
        })
    }

    /// What `send_found` sent, as the number of findings in each message, in order,
    /// and the ids of the claims across them.
    fn sent(found: Vec<PassItem>) -> (Vec<usize>, Vec<i64>) {
        let (tx, rx) = ipc::channel::<FromChild>().unwrap();
        // From another thread: a socket holds a few messages only, and a send then
        // waits for the reader.
        let sender = std::thread::spawn(move || Grabber::send_found(&tx, found));
        let (mut sizes, mut ids) = (Vec::new(), Vec::new());
        while let Ok(FromChild::Pass(items)) = rx.recv() {
            sizes.push(items.len());
            ids.extend(items.iter().filter_map(|i| match i {
                PassItem::Claimed(c) => Some(c.id),
                _ => None,
            }));
        }
        sender.join().unwrap();
        (sizes, ids)
    }

    #[test]
    fn a_pass_s_findings_go_in_few_bounded_messages_in_order() {
        // Nothing found: no message.
        assert_eq!(sent(vec![]), (vec![], vec![]));
        // Small findings: PASS_ITEMS to a message.
        let (sizes, ids) = sent((0..150).map(|i| claim(i, 8)).collect());
        assert_eq!(sizes, [PASS_ITEMS, PASS_ITEMS, 150 - 2 * PASS_ITEMS]);
        assert_eq!(ids, (0..150).collect::<Vec<_>>());
        // Large claims: about PASS_BYTES to a message, and a claim larger than that
        // still goes, alone.
        let big = PASS_BYTES / 3;
        let (sizes, ids) = sent(vec![
            claim(1, big),
            claim(2, big),
            claim(3, big),
            claim(4, PASS_BYTES + 1),
            claim(5, 8),
        ]);
        assert_eq!(sizes, [2, 1, 1, 1]);
        assert_eq!(ids, [1, 2, 3, 4, 5]);
    }
}
