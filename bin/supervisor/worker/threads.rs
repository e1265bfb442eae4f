//! The worker's helper threads: one forwards the supervisor's messages (and answers them
//! while the loop waits for a job), one reaps what attempts leave behind, and one takes
//! the job down on SIGTERM.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::mailbox::{mailbox, Post};
use ipc_channel::ipc::{IpcReceiver, IpcSender};
use supervisor_os::Sig;

use super::WorkerEv;
use crate::wire::{FromChild, ToChild};

/// The process group of the job running now (0: none), for the SIGTERM thread.
pub(super) static JOB_PGID: AtomicU32 = AtomicU32::new(0);

/// Set by the SIGTERM thread before it kills the job: the worker is on its way out.
static LEAVING: AtomicBool = AtomicBool::new(false);

/// The worker got SIGTERM and is going: nothing more is to be reported.
pub(super) fn leaving() -> bool {
    LEAVING.load(Ordering::SeqCst)
}

/// Wait for the SIGTERM thread to end the process (once [`leaving`]).
pub(super) fn wait_to_be_ended() -> ! {
    loop {
        std::thread::park();
    }
}

/// SIGTERM (the death signal the supervisor gives its workers, or an operator's kill):
/// take the job's whole process group down, then go. A thread of its own does it, so
/// that it happens whatever the main loop is doing. The job's own death signal only
/// reaches the job's process, not what that process started.
pub(super) fn start_sigterm_thread() -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM])?;
    std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                // Before any kill: the loop, woken by the job's death, must not report
                // it as the job's outcome (the worker's death makes the attempt lost).
                LEAVING.store(true, Ordering::SeqCst);
                let pgid = JOB_PGID.load(Ordering::SeqCst);
                if pgid != 0 {
                    let _ = supervisor_os::signal_group(pgid, Sig::SIGKILL);
                }
                // And whatever left the job's process group: all of it is below us.
                supervisor_os::kill_descendants(100);
                std::process::exit(1);
            }
        })?;
    Ok(())
}

/// What the reader thread must know while the loop is blocked waiting for a job.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    /// The job the loop waits for, and its process group: set for as long as it waits.
    pub job: Option<(i64, u32)>,
    /// Told to stop meanwhile: the loop stops once the attempt is over.
    pub stop: bool,
    /// A signal was passed on to the job meanwhile.
    pub signaled: bool,
}

pub(super) fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hand the supervisor's messages on as events, and `Closed` once it is gone. While the
/// loop is blocked waiting for a job's process (`waiting.job`), the reader answers them
/// itself, so that a job's end wakes the loop at once and nothing else wakes it: a
/// ping gets its pong, a signal for the job is sent, a stop is noted for later, a job
/// to run is refused (the worker is busy); a supervisor gone takes the job down.
pub(super) fn start_ipc_reader(
    rx: IpcReceiver<ToChild>,
    events: Post<WorkerEv>,
    tx: IpcSender<FromChild>,
    waiting: Arc<Mutex<Waiting>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ipc-reader".into())
        .spawn(move || loop {
            let got = rx.recv();
            // Held until the message is posted: the loop sets `job` under this lock and
            // then drains the mailbox, so a message is either posted before the loop
            // looks, or answered here. Never both, and never left unread while the
            // loop waits for the job.
            let mut w = lock(&waiting);
            if let Some((job, pgid)) = w.job {
                match got {
                    Ok(msg) => {
                        answer_while_busy(msg, job, pgid, &mut w, &tx);
                        continue;
                    }
                    Err(_) => {
                        // The supervisor is gone: the job goes, and all it started.
                        let _ = supervisor_os::signal_group(pgid, Sig::SIGKILL);
                        super::kill_stragglers(Sig::SIGKILL);
                    }
                }
            }
            match got {
                Ok(msg) => {
                    if events.send(WorkerEv::Msg(msg)).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = events.send(WorkerEv::Closed);
                    return;
                }
            }
        })
}

/// A message of the supervisor while `job` (process group `pgid`) runs and the loop
/// waits for it.
fn answer_while_busy(
    msg: ToChild,
    job: i64,
    pgid: u32,
    waiting: &mut Waiting,
    tx: &IpcSender<FromChild>,
) {
    match msg {
        ToChild::Ping => {
            // A supervisor gone shows as the reader's next `recv` failing.
            let _ = tx.send(FromChild::Pong);
        }
        ToChild::Stop => waiting.stop = true,
        ToChild::SignalJob { job: which, kill } => {
            if which == job {
                let sig = if kill { Sig::SIGKILL } else { Sig::SIGTERM };
                waiting.signaled = true;
                let _ = supervisor_os::signal_group(pgid, sig);
            }
        }
        ToChild::Run(payload) => refuse_busy(tx, payload.id),
        other => log::error!("worker: unexpected message {other:?}"),
    }
}

/// Refuse to run `job`: an attempt is still going.
pub(super) fn refuse_busy(tx: &IpcSender<FromChild>, job: i64) {
    log::error!("worker: asked to run job {job} while busy; refusing");
    let _ = tx.send(FromChild::JobEnded {
        job,
        end: None,
        ran_for_s: None,
        start_error: Some("its worker was busy".into()),
        reason: None,
        exited_first: false,
    });
}

/// One long-lived thread reaps what attempts leave behind (no thread per attempt): for
/// each `()` it is sent, it waits until no child of the worker is left, then sends
/// `AllReaped`.
pub(super) fn start_waiter(events: Post<WorkerEv>) -> (Post<()>, std::io::Result<JoinHandle<()>>) {
    let (wait_tx, wait_rx) = mailbox::<()>();
    let waiter = std::thread::Builder::new()
        .name("job-waiter".into())
        .spawn(move || {
            for () in &wait_rx {
                supervisor_os::reap_until_none();
                if events.send(WorkerEv::AllReaped).is_err() {
                    return;
                }
            }
        });
    (wait_tx, waiter)
}
