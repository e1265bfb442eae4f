//! The worker's helper threads: one forwards the supervisor's messages, one waits for
//! each job in turn, and one takes the job down on SIGTERM.

use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use crate::mailbox::{mailbox, Post};
use ipc_channel::ipc::IpcReceiver;
use supervisor_os::{Ended, Sig};

use super::{WaitFor, WorkerEv};
use crate::wire::ToChild;

/// The process group of the job running now (0: none), for the SIGTERM thread.
pub(super) static JOB_PGID: AtomicU32 = AtomicU32::new(0);

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

/// Hand the supervisor's messages on as events, and `Closed` once it is gone.
pub(super) fn start_ipc_reader(
    rx: IpcReceiver<ToChild>,
    events: Post<WorkerEv>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ipc-reader".into())
        .spawn(move || loop {
            match rx.recv() {
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

/// One long-lived thread waits for each job in turn (no thread per job): for what it
/// is sent, it sends back `JobExit` or `AllReaped`.
pub(super) fn start_waiter(
    events: Post<WorkerEv>,
) -> (Post<WaitFor>, std::io::Result<JoinHandle<()>>) {
    let (wait_tx, wait_rx) = mailbox::<WaitFor>();
    let waiter = std::thread::Builder::new()
        .name("job-waiter".into())
        .spawn(move || {
            for what in &wait_rx {
                let ev = match what {
                    WaitFor::Job { job, pid, since } => {
                        let ended = supervisor_os::wait_pid(pid).unwrap_or(Ended::Code(-1));
                        WorkerEv::JobExit {
                            job,
                            ended,
                            ran_for: since.elapsed(),
                        }
                    }
                    WaitFor::Rest => {
                        supervisor_os::reap_until_none();
                        WorkerEv::AllReaped
                    }
                };
                if events.send(ev).is_err() {
                    return;
                }
            }
        });
    (wait_tx, waiter)
}
