//! The grabber child: claims jobs from the store against the credits the supervisor
//! grants (one per free worker slot; no prefetch) and routes them to groups.
//!
//! Its polling is buildbot's doorbell loop: a submit, a cancel, a returned credit or a
//! new config rings it; rings coalesce into one pass; each pass asks to be woken at the
//! next poll interval (or the next retry time, or after an oslo-style error backoff).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use supervisor_core::backoff::{Backoff, BackoffState};
use supervisor_core::doorbell::{Doorbell, Outcome};
use supervisor_core::ledger::Ledger;
use supervisor_core::{SplitMix64, Time};
use supervisor_store::Route;

use crate::events_file::wall_now;
use crate::ipc;
use crate::wire::{Claim, FromChild, StoreArg, ToChild};

struct Grabber {
    tx: ipc_channel::ipc::IpcSender<FromChild>,
    store_arg: StoreArg,
    store: Option<crate::store::Store>,
    instance: i64,
    poll_interval: Duration,
    error_backoff: Backoff,
    errors: BackoffState,
    rng: SplitMix64,
    routes: Vec<Route>,
    /// What the supervisor granted, revoked and asked for.
    ledger: Ledger,
    cancels_sent: BTreeSet<i64>,
    /// Look for cancel requests in the next pass: set by the doorbell (`cancel` rings
    /// it) and by the poll timer, not by every returned credit.
    check_cancels: bool,
    started: Instant,
    /// The routes changed (or this grabber just started): decide the group of every job
    /// in the queue again, once, before the next claim.
    reroute: bool,
    /// The wall time the current (or last) pass began: a claim it made that was lost
    /// with the connection is no later than this.
    pass_began: f64,
}

/// Run the grabber until told to stop or the supervisor goes away.
pub fn main(
    ipc_name: &str,
    store: StoreArg,
    instance: i64,
    poll_interval_s: f64,
    error_backoff: Backoff,
    routes: Vec<Route>,
) -> i32 {
    let (tx, rx) = match ipc::connect(ipc_name) {
        Ok(x) => x,
        Err(e) => {
            log::error!("grabber: cannot connect to the supervisor: {e}");
            return 1;
        }
    };
    let mut g = Grabber {
        tx,
        store_arg: store,
        store: None,
        instance,
        poll_interval: supervisor_core::bounds::duration(poll_interval_s),
        error_backoff,
        errors: BackoffState::default(),
        rng: SplitMix64::new(u64::from(std::process::id()) ^ (wall_now() * 1e6) as u64),
        routes,
        ledger: Ledger::new(),
        cancels_sent: BTreeSet::new(),
        check_cancels: true,
        started: Instant::now(),
        reroute: true,
        pass_began: 0.0,
    };
    if g.tx.send(FromChild::Ready).is_err() {
        return 1;
    }
    let mut bell = Doorbell::new(Duration::from_millis(1));
    bell.add("poll");
    bell.ring();
    loop {
        let now = g.now();
        if let Some(pass) = bell.poll(now) {
            if !pass.rung {
                g.check_cancels = true; // the poll timer
            }
            let results: Vec<(&str, Outcome)> =
                pass.ids.into_iter().map(|k| (k, g.pass())).collect();
            bell.finish(g.now(), results);
            continue;
        }
        let msg = match bell.next_deadline() {
            Some(t) => match rx.try_recv_timeout(t.saturating_since(g.now())) {
                Ok(m) => Some(m),
                Err(ipc_channel::TryRecvError::Empty) => None,
                Err(_) => return 0, // the supervisor is gone
            },
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return 0,
            },
        };
        let Some(msg) = msg else { continue };
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg {
                ToChild::Ping => {
                    if g.tx.send(FromChild::Pong).is_err() {
                        return 0;
                    }
                }
                ToChild::Stop => return 0,
                ToChild::Settings(s) => {
                    if g.routes != s.routes {
                        g.reroute = true;
                    }
                    g.routes = s.routes;
                    g.ledger.set_runnable(s.runnable);
                    g.poll_interval = supervisor_core::bounds::duration(s.poll_interval_s);
                    g.error_backoff = s.error_backoff.into();
                    bell.ring();
                }
                ToChild::Grant { group, n, epoch } => {
                    g.ledger.grant(&group, n, epoch);
                    bell.ring();
                }
                ToChild::Revoke { group, epoch } => g.ledger.revoke(&group, epoch),
                ToChild::Poll { epoch } => {
                    g.ledger.poll(epoch);
                    bell.ring();
                }
                ToChild::Wake => {
                    g.check_cancels = true;
                    bell.ring();
                }
                ToChild::Hold(on) => {
                    g.ledger.hold(on);
                    bell.ring();
                }
                ToChild::Run(_) | ToChild::SignalJob { .. } => {
                    log::error!("grabber: got a worker's message; ignoring it")
                }
            }
            // Take everything already queued before running a pass: rings coalesce.
            next = rx.try_recv().ok();
        }
    }
}

impl Grabber {
    fn now(&self) -> Time {
        Time::from_origin(self.started.elapsed())
    }

    /// One pass: claim what the credits allow, pass on cancel requests, report.
    fn pass(&mut self) -> Outcome {
        match self.try_pass() {
            Ok(wake) => {
                self.errors.reset();
                Ok(Some(wake))
            }
            Err(e) => {
                let delay = self.errors.next(&self.error_backoff, &mut self.rng);
                log::warn!(
                    "grabber: store error: {e:#}; next try in {:.2}s",
                    delay.as_secs_f64()
                );
                let _ = self.tx.send(FromChild::SourceFailed {
                    error: format!("{e:#}"),
                    claimed_before: self.pass_began,
                });
                // Reconnect on the next try: the connection itself may be what broke.
                self.store = None;
                self.ledger.forget_report();
                Ok(Some(self.now() + delay))
            }
        }
    }

    fn try_pass(&mut self) -> anyhow::Result<Time> {
        if self.store.is_none() {
            self.store = Some(crate::store::open_hot(&self.store_arg)?);
        }
        self.pass_began = wall_now();
        let store = self.store.as_mut().expect("opened above");
        let routed = self.routes.iter().map(|r| r.group.as_str());
        let Some(mut credits) = self.ledger.to_claim(routed) else {
            return Ok(self.now() + self.poll_interval); // held
        };
        if self.reroute {
            let changed = store.reroute(&self.routes)?;
            if changed > 0 {
                log::info!("grabber: {changed} queued job(s) routed to another group");
            }
            self.reroute = false;
        }
        let wall = wall_now();
        let result = store.claim(self.instance, &self.routes, &mut credits, wall)?;
        for r in &result.refused {
            let refused = FromChild::Refused {
                job: r.id,
                attempts: r.attempts,
                reason: r.reason.clone(),
            };
            if self.tx.send(refused).is_err() {
                std::process::exit(0);
            }
        }
        for job in &result.jobs {
            let claim = Claim {
                id: job.id,
                group: job.group.clone(),
                attempt: job.attempt,
                timeout_s: job.timeout_s,
                max_attempts: job.max_attempts,
                epoch: self.ledger.spend(&job.group),
                command: job.command.clone(),
                env: job.env.clone(),
                cwd: job.cwd.clone(),
            };
            if self.tx.send(FromChild::Claimed(claim)).is_err() {
                std::process::exit(0);
            }
        }
        if std::mem::take(&mut self.check_cancels) {
            let requests = store.cancel_requests(self.instance)?;
            let requested: BTreeSet<i64> = requests.iter().map(|(id, _)| *id).collect();
            for id in requested.difference(&self.cancels_sent) {
                let _ = self.tx.send(FromChild::CancelRequested { job: *id });
            }
            self.cancels_sent = requested;
        }
        let empty = result.jobs.is_empty() && result.more.is_empty();
        if let Some(epoch) = self.ledger.report(empty) {
            let _ = self.tx.send(FromChild::SourceReport { epoch, empty });
        }
        let mut wake = self.now() + self.poll_interval;
        if let Some(at) = result.more.waiting_until {
            let until = supervisor_core::bounds::duration(at - wall);
            wake = wake.min(self.now() + until);
        }
        Ok(wake)
    }
}
