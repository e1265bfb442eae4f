//! Panics: every one is written to the events file (`supervisor_panicked`) before the
//! supervisor exits with failure, and the faults the tests inject to see that happen.

use crate::ipc::Ev;
use crate::record::EventRecord;
use crossbeam_channel::Sender;

use super::Supervisor;

/// A panic on another thread than the loop's, for the loop to record before exiting.
pub(super) static PANIC_TX: std::sync::OnceLock<Sender<Ev>> = std::sync::OnceLock::new();

/// The last panic's message and location, for the loop's `catch_unwind`.
pub(super) static LAST_PANIC: std::sync::Mutex<Option<(String, String)>> =
    std::sync::Mutex::new(None);

/// Record every panic (message, location, thread) before it unwinds, and still print
/// it as Rust does. A panic on the loop's thread unwinds to `run`, which writes it to
/// the events file; one on a helper thread (hub, signals, accept) is sent to the loop,
/// which does the same. Either way the supervisor then exits with failure: its workers
/// take their jobs down (their death signal) and the next run gives those jobs back,
/// counting a death of their supervisor.
pub(super) fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if crate::ipc::decoding_now() {
            // A child's garbage, caught where it is decoded: not a crash of ours.
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic without a message)".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        if let Ok(mut last) = LAST_PANIC.try_lock() {
            *last = Some((message.clone(), location.clone()));
        }
        if thread != "main" {
            if let Some(tx) = PANIC_TX.get() {
                let _ = tx.send(Ev::Panicked {
                    message: message.clone(),
                    location: location.clone(),
                    thread,
                });
            }
        }
        default(info);
    }));
}

/// A fault the tests inject through `SUPERVISOR_TEST_FAULT`, to see what a panic does
/// (nothing else can make the supervisor panic, by design): `panic-on-job-start` panics
/// the loop when a job starts, `panic-on-doorbell` the signal thread at a SIGUSR1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    PanicOnJobStart,
    PanicOnDoorbell,
}

pub(super) fn injected_fault() -> Option<Fault> {
    match std::env::var("SUPERVISOR_TEST_FAULT").ok()?.as_str() {
        "panic-on-job-start" => Some(Fault::PanicOnJobStart),
        "panic-on-doorbell" => Some(Fault::PanicOnDoorbell),
        other => {
            log::warn!("SUPERVISOR_TEST_FAULT={other:?} is no fault this build knows");
            None
        }
    }
}

impl Supervisor {
    /// Write a panic to the events file (`supervisor status` shows it).
    pub(super) fn record_panic(&mut self, message: &str, location: &str, thread: &str) {
        self.emit(EventRecord::SupervisorPanicked {
            message: message.to_string(),
            location: location.to_string(),
            thread: thread.to_string(),
        });
    }
}
