//! The lease: this supervisor's life in a store shared with other hosts.
//!
//! Every `touch_every` a thread of its own, on a connection of its own, renews our
//! instance in the store and takes back the jobs of supervisors it finds dead. Another
//! thread, the watchdog, fences us: when no renewal has succeeded for `fence_after`
//! (`dead_after - touch_every - clock skew`), or the store says another supervisor
//! already took us for dead, it kills every process below us (the grabber, so nothing
//! more is claimed; the workers and every job, so that none runs on two hosts at once)
//! and tells the loop, which stops with exit code 1 ([`Input::Fenced`]).
//!
//! Neither thread waits for the event loop, nor the loop for them: a store call that
//! hangs (a partition drops every packet: up to `TCP_USER_TIMEOUT` a call) stalls only
//! its own thread, and the watchdog keeps time whatever the loop and the toucher are
//! blocked on.
//!
//! [`Input::Fenced`]: supervisor_core::supervision::Input::Fenced

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use supervisor_store::InstanceId;

use crate::events_file::wall_now;
use crate::instances::Me;
use crate::ipc::Ev;
use crate::wire::StoreArg;

/// After a failed renewal, the next try comes this soon (or at the next touch, if
/// sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What the two threads share.
struct State {
    /// When the lease was last renewed: milliseconds since `origin`, taken when the
    /// renewal was *sent* (the store's record of it is no older than that).
    renewed_ms: AtomicU64,
    origin: Instant,
    /// Set once, by whoever fences first.
    fenced: AtomicBool,
}

impl State {
    fn renewed(&self) -> Instant {
        self.origin + Duration::from_millis(self.renewed_ms.load(Ordering::SeqCst))
    }

    fn renew(&self, sent: Instant) {
        let ms = sent.saturating_duration_since(self.origin).as_millis() as u64;
        self.renewed_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// Fence, once: tell the loop first (so that its immediate shutdown comes before
    /// the deaths it is about to see), then kill every process below us.
    fn fence(&self, events: &Sender<Ev>, reason: String) {
        if self.fenced.swap(true, Ordering::SeqCst) {
            return;
        }
        log::error!("{reason}; killing every job and child, and stopping");
        let _ = events.send(Ev::Fenced { reason });
        // Not reaped here: the loop reaps its children and learns how they ended.
        supervisor_os::sigkill_descendants(5, false);
    }
}

/// Renews our instance and watches the lease (see the module docs). The threads live as
/// long as the process.
pub struct Lease {
    state: Arc<State>,
}

/// The timings of a lease.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub touch_every: Duration,
    pub fence_after: Duration,
    pub dead_after: Duration,
}

impl Lease {
    /// Start both threads; our instance was registered (touched) just now.
    pub fn start(
        store: StoreArg,
        instance: InstanceId,
        me: Me,
        timings: Timings,
        events: Sender<Ev>,
    ) -> std::io::Result<Lease> {
        let state = Arc::new(State {
            renewed_ms: AtomicU64::new(0),
            origin: Instant::now(),
            fenced: AtomicBool::new(false),
        });
        {
            let state = state.clone();
            let events = events.clone();
            thread::Builder::new()
                .name("lease-toucher".into())
                .stack_size(256 * 1024)
                .spawn(move || toucher(&state, &store, instance, &me, &timings, &events))?;
        }
        {
            let state = state.clone();
            let fence_after = timings.fence_after;
            let dead_after = timings.dead_after;
            thread::Builder::new()
                .name("lease-watchdog".into())
                .stack_size(64 * 1024)
                .spawn(move || watchdog(&state, fence_after, dead_after, &events))?;
        }
        Ok(Lease { state })
    }

    /// Whether we fenced ourselves (the loop must not start any child again).
    pub fn fenced(&self) -> bool {
        self.state.fenced.load(Ordering::SeqCst)
    }
}

fn toucher(
    state: &State,
    arg: &StoreArg,
    instance: InstanceId,
    me: &Me,
    timings: &Timings,
    events: &Sender<Ev>,
) {
    let mut store = None;
    loop {
        let sent = Instant::now();
        if store.is_none() {
            match crate::store::open_for_loop(arg) {
                Ok(s) => store = Some(s),
                Err(e) => log::warn!("lease: cannot reach the job store: {e:#}"),
            }
        }
        let mut ok = false;
        if let Some(s) = store.as_mut() {
            let now = wall_now();
            match s.touch_instance(instance, now) {
                Ok(true) => {
                    state.renew(sent);
                    ok = true;
                    match s.requeue_orphans(instance, &|i| me.is_dead(i, now), now) {
                        Ok(ids) if !ids.is_empty() => {
                            log::warn!("requeued jobs {ids:?} held by a dead supervisor");
                            let _ = events.send(Ev::Doorbell);
                        }
                        Ok(_) => {}
                        Err(e) => log::warn!("cannot look for dead supervisors: {e}"),
                    }
                }
                Ok(false) => {
                    // Another supervisor took us for dead (a stall longer than
                    // dead_after, or a clock far off) and requeued our jobs, which may
                    // be running elsewhere already.
                    state.fence(
                        events,
                        "taken for dead by another supervisor: our instance is gone from \
                         the store and our jobs were requeued"
                            .into(),
                    );
                }
                Err(e) => {
                    log::warn!("cannot touch our instance in the store: {e}");
                    store = None; // its connection may be what broke
                }
            }
        }
        if state.fenced.load(Ordering::SeqCst) {
            return;
        }
        let next = if ok {
            timings.touch_every
        } else {
            timings.touch_every.min(RETRY_AFTER_FAILURE)
        };
        thread::sleep(next.saturating_sub(sent.elapsed()));
    }
}

fn watchdog(state: &State, fence_after: Duration, dead_after: Duration, events: &Sender<Ev>) {
    loop {
        let renewed = state.renewed();
        let silent = renewed.elapsed();
        if silent >= fence_after {
            state.fence(
                events,
                format!(
                    "fenced: the store has not heard from this supervisor for {:.0} s \
                     (dead_after_s {}): others may take it for dead soon",
                    silent.as_secs_f64(),
                    dead_after.as_secs_f64()
                ),
            );
            return;
        }
        if state.fenced.load(Ordering::SeqCst) {
            return;
        }
        thread::sleep(fence_after - silent);
    }
}
