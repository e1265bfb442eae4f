//! Talking to children: spawn with a handshake, one hub thread that receives from every
//! child, and one thread per child that accepts its handshake and then writes to it, so
//! that a child that stops reading can never block the supervisor.
//!
//! Everything that arrives goes into the supervisor's one event queue as a [`Ev`].

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::mailbox::{mailbox, Mailbox, Post};
use ipc_channel::ipc::{
    self, IpcOneShotServer, IpcReceiver, IpcReceiverSet, IpcSelectionResult, IpcSender,
};
use supervisor_core::supervision::ChildId;
use supervisor_os::{JobCommand, Spawner};

use crate::wire::{ChildArgs, ChildRole, FromChild, ToChild};

/// Set in a child's environment: its arguments (a [`ChildArgs`] as JSON) are on its
/// stdin. Jobs never see it.
pub const CHILD_VAR: &str = "SUPERVISOR_CHILD";

/// The most a child reads of its arguments.
pub const MAX_CHILD_ARGS: u64 = 1 << 20;

/// Messages a child may have waiting before it counts as wedged.
const WRITE_QUEUE: usize = 1024;

/// A child's thread's stack: it accepts one handshake, then only encodes and sends
/// messages.
const CHILD_THREAD_STACK: usize = 256 * 1024;

/// One thing that happened, for the supervisor's event loop.
#[derive(Debug)]
pub enum Ev {
    /// A signal arrived.
    Signal(i32),
    /// A child finished its handshake: what the loop sends it goes through `writer`.
    Connected { child: ChildId, writer: Writer },
    /// A child never connected (it died first, or sent garbage).
    HandshakeFailed { child: ChildId, error: String },
    /// A message from a child.
    Message { child: ChildId, msg: FromChild },
    /// A child's channel closed: it has said everything it will ever say.
    Closed { child: ChildId },
    /// A child sent something that does not decode.
    BadMessage { child: ChildId, error: String },
    /// The store's doorbell rang on some host (PostgreSQL's NOTIFY): wake the grabber.
    Doorbell,
    /// The lease in a shared store is lost (see `lease.rs`); every process below us is
    /// being killed.
    Fenced { reason: String },
    /// The state dir was removed or replaced under us (its pidfile is gone): nothing
    /// can reach us any more, and our store and events file are unlinked files.
    StateGone { reason: String },
    /// A thread of the supervisor other than the loop's panicked.
    Panicked {
        message: String,
        location: String,
        thread: String,
    },
}

/// The hub: a thread that selects over every child's receiver, and what starts the
/// children.
pub struct Hub {
    starter: Starter,
    /// More starters, each on a thread of its own, for batches (see [`Hub::spawn_all`]).
    helpers: Vec<Helper>,
}

/// What starts children from one thread.
struct Starter {
    add: IpcSender<(ChildId, IpcReceiver<FromChild>)>,
    /// `SUPERVISOR_INSTANCE` for every child, and so for every job (see `instances.rs`).
    instance_marker: String,
    spawner: Spawner,
}

/// One child to start: who, its arguments, and where its thread reports.
pub type SpawnRequest = (ChildId, ChildArgs, Sender<Ev>);

/// A started child's pid and the name of its handshake server.
pub type Spawned = std::io::Result<(u32, String)>;

/// How many helper threads start children besides the loop's own.
const HELPERS: usize = 2;

/// A helper thread that starts its share of a batch of children.
struct Helper {
    requests: crossbeam_channel::Sender<SpawnRequest>,
    results: crossbeam_channel::Receiver<Spawned>,
}

impl Hub {
    /// Start the hub thread, reporting into `events`.
    ///
    /// Each child's handshake socket lives, until the child connects, in a directory
    /// of its own that ipc-channel creates with tempfile: in memory where we can
    /// (`supervisor_os::memory_temp_dir`), as four inode operations on a disk cost
    /// about 0.1 ms of CPU a child. Only this process's temporary files move; its
    /// children and their jobs keep `TMPDIR` as it was.
    pub fn start(events: Sender<Ev>, instance_marker: String) -> std::io::Result<Hub> {
        if let Some(dir) = supervisor_os::memory_temp_dir() {
            if let Err(already) = tempfile::env::override_temp_dir(&dir) {
                log::debug!("temporary files stay in {}", already.display());
            }
        }
        let (add, add_rx) =
            ipc::channel::<(ChildId, IpcReceiver<FromChild>)>().map_err(std::io::Error::other)?;
        let mut set = IpcReceiverSet::new()?;
        let ctl = set.add(add_rx)?;
        thread::Builder::new()
            .name("ipc-hub".into())
            .spawn(move || {
                let mut ids: std::collections::HashMap<u64, ChildId> = Default::default();
                loop {
                    let Ok(results) = set.select() else { return };
                    for r in results {
                        match r {
                            IpcSelectionResult::MessageReceived(id, msg) if id == ctl => {
                                match msg.to::<(ChildId, IpcReceiver<FromChild>)>() {
                                    Ok((child, rx)) => match set.add(rx) {
                                        Ok(sid) => {
                                            ids.insert(sid, child);
                                        }
                                        Err(e) => {
                                            log::error!("ipc hub cannot watch child {child}: {e}")
                                        }
                                    },
                                    Err(e) => log::error!("ipc hub control message: {e}"),
                                }
                            }
                            IpcSelectionResult::MessageReceived(id, msg) => {
                                let Some(&child) = ids.get(&id) else { continue };
                                let ev = match decoding(|| msg.to::<FromChild>()) {
                                    Ok(Ok(msg)) => Ev::Message { child, msg },
                                    Ok(Err(e)) => Ev::BadMessage {
                                        child,
                                        error: e.to_string(),
                                    },
                                    Err(panic) => Ev::BadMessage {
                                        child,
                                        error: panic,
                                    },
                                };
                                if events.send(ev).is_err() {
                                    return;
                                }
                            }
                            IpcSelectionResult::ChannelClosed(id) if id == ctl => return,
                            IpcSelectionResult::ChannelClosed(id) => {
                                if let Some(child) = ids.remove(&id) {
                                    if events.send(Ev::Closed { child }).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                }
            })?;
        Ok(Hub {
            starter: Starter {
                add,
                instance_marker,
                spawner: Spawner::sharing_fd_table(),
            },
            helpers: Vec::new(),
        })
    }

    /// Start one child (see [`Starter::spawn`]).
    pub fn spawn(&mut self, child: ChildId, args: ChildArgs, events: Sender<Ev>) -> Spawned {
        self.starter.spawn(child, args, events)
    }

    /// Start a batch of children, [`HELPERS`] + 1 at a time; the results in the batch's
    /// order.
    ///
    /// A start keeps its thread waiting until the child has called `execve` (a vfork),
    /// and meanwhile the children started before it compete for the CPU, so that one
    /// thread started 1,000 workers at ~1.1 ms apiece with the machine 12% idle. The
    /// children of a batch therefore start in turn on this thread and on helper
    /// threads, which live as long as the supervisor: a child's death signal fires when the thread that started it
    /// ends (`os-notes.md`), so no thread that starts children may end before them.
    pub fn spawn_all(&mut self, batch: Vec<SpawnRequest>) -> Vec<Spawned> {
        if batch.len() < 2 {
            return batch
                .into_iter()
                .map(|(child, args, events)| self.spawn(child, args, events))
                .collect();
        }
        while self.helpers.len() < HELPERS {
            match self.starter.start_helper() {
                Ok(h) => self.helpers.push(h),
                Err(e) => {
                    log::warn!("children start on fewer threads: no helper thread: {e}");
                    break;
                }
            }
        }
        // Request i goes to starter i % n (0: this thread's own), in order.
        let n = self.helpers.len() + 1;
        let mut results: Vec<Option<Spawned>> = Vec::with_capacity(batch.len());
        for (i, request) in batch.into_iter().enumerate() {
            let result = match i % n {
                0 => {
                    let (child, args, events) = request;
                    Some(self.starter.spawn(child, args, events))
                }
                h => {
                    let child = request.0;
                    self.helpers[h - 1].requests.send(request).err().map(|_| {
                        Err(std::io::Error::other(format!(
                            "the helper thread is gone: child {child} not started"
                        )))
                    })
                }
            };
            results.push(result);
        }
        (results.into_iter().enumerate())
            .map(|(i, r)| {
                r.unwrap_or_else(|| {
                    self.helpers[i % n - 1]
                        .results
                        .recv()
                        .unwrap_or_else(|_| Err(std::io::Error::other("the helper thread is gone")))
                })
            })
            .collect()
    }
}

impl Starter {
    /// A thread with a starter of its own, serving requests in order until the
    /// supervisor ends (it never returns while its requests can come).
    fn start_helper(&self) -> std::io::Result<Helper> {
        let (requests, inbox) = crossbeam_channel::unbounded::<SpawnRequest>();
        let (outbox, results) = crossbeam_channel::unbounded::<Spawned>();
        let mut starter = Starter {
            add: self.add.clone(),
            instance_marker: self.instance_marker.clone(),
            spawner: Spawner::sharing_fd_table(),
        };
        thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for (child, args, events) in inbox {
                    if outbox.send(starter.spawn(child, args, events)).is_err() {
                        break;
                    }
                }
                // The hub is gone, and with it the supervisor's loop: the children this
                // thread started may still be stopping, and would get their death
                // signal the moment it ended.
                loop {
                    thread::park();
                }
            })?;
        Ok(Helper { requests, results })
    }

    /// Spawn our own binary as a child in `args.role`, and accept its handshake on a
    /// thread of its own (accept has no timeout of its own; see [`unblock`]), which
    /// then stays as the child's writer: one thread a child, started once (a thread's
    /// start and end cost ~30 µs of CPU, and the supervisor starts 1,000 workers).
    fn spawn(&mut self, child: ChildId, mut args: ChildArgs, events: Sender<Ev>) -> Spawned {
        let (server, name) = IpcOneShotServer::<FromChild>::new()?;
        args.ipc = name.clone();
        let json = serde_json::to_string(&args).map_err(std::io::Error::other)?;
        // A worker gets SIGTERM when the supervisor dies, and kills everything below it
        // before it goes (its job's own death signal reaches the job's process only, not
        // what that started); the grabber has nothing to clean up.
        let death = match &args.role {
            ChildRole::Worker { .. } => supervisor_os::Sig::SIGTERM,
            ChildRole::Grabber { .. } => supervisor_os::Sig::SIGKILL,
        };
        // The command line says what the child is and nothing else, as the contract
        // words it (`supervisor: worker GROUP/SLOT`; `ps` shows it to every user); its
        // arguments, the store's URL with any password among them, come on its stdin,
        // a pipe that only it reads.
        let argv = [args.role.title()];
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            // systemd hears from the supervisor alone
            .filter(|(k, _)| {
                k != "NOTIFY_SOCKET" && k != crate::instances::INSTANCE_VAR && k != CHILD_VAR
            })
            .collect();
        env.push((
            crate::instances::INSTANCE_VAR.into(),
            self.instance_marker.clone().into(),
        ));
        env.push((CHILD_VAR.into(), "stdin".into()));
        let (role_in, mut role_out) = std::io::pipe()?;
        let stderr = std::io::stderr();
        let cmd = JobCommand {
            argv: &argv,
            env,
            cwd: None,
            stdin: role_in.as_fd(),
            output: stderr.as_fd(),
            // /proc/self/exe, not current_exe(): it still works after the binary was
            // replaced on disk, and only the running image speaks our message format.
            program: Some(Path::new("/proc/self/exe")),
            death_signal: death,
            umask: None,
        };
        // A clone(CLONE_VM | CLONE_VFORK) and exec, as for jobs: a fork would copy the
        // page tables of a supervisor with a thread per child, milliseconds apiece
        // with 1,000 workers.
        let pid = self
            .spawner
            .spawn(&cmd)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        drop(role_in);
        let add = self.add.clone();
        thread::Builder::new()
            .name(format!("child-{child}"))
            .stack_size(CHILD_THREAD_STACK)
            .spawn(move || {
                // Here, not on the loop's thread: a pipe holds 64 KiB, and a child that
                // died before reading gets EPIPE, which its handshake's failure reports.
                {
                    use std::io::Write;
                    if let Err(e) = role_out.write_all(json.as_bytes()) {
                        log::debug!("cannot hand child {child} its arguments: {e}");
                    }
                    drop(role_out);
                }
                let accepted = decoding(|| server.accept()).unwrap_or_else(|panic| {
                    Err(ipc_channel::IpcError::Io(std::io::Error::other(panic)))
                });
                let ev = match accepted {
                    Ok((rx, FromChild::Hello { to_child, .. })) => {
                        // Connected first: the hub passes on the child's messages (its
                        // Ready) only once it has `rx`, so they queue after this.
                        let (writer, queue) = Writer::new();
                        let _ = events.send(Ev::Connected { child, writer });
                        match add.send((child, rx)) {
                            Ok(()) => return queue.write_to(to_child),
                            Err(e) => Ev::HandshakeFailed {
                                child,
                                error: e.to_string(),
                            },
                        }
                    }
                    Ok((_, other)) => Ev::HandshakeFailed {
                        child,
                        error: format!("expected Hello first, got {other:?}"),
                    },
                    Err(e) => Ev::HandshakeFailed {
                        child,
                        error: e.to_string(),
                    },
                };
                let _ = events.send(ev);
            })?;
        Ok((pid, name))
    }
}

thread_local! {
    /// Set while [`decoding`] runs: a panic then is a bad message, not a crash.
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is decoding a child's message under [`decoding`]: the
/// supervisor's panic hook leaves such a panic to it.
pub fn decoding_now() -> bool {
    DECODING.with(|d| d.get())
}

/// Run `f`, a decoding of bytes a child sent, turning a panic inside ipc-channel (a
/// message naming a channel that did not come with it panics its deserialiser) into an
/// error: the child is then killed as one that sent garbage, and the supervisor goes on.
pub(crate) fn decoding<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    DECODING.with(|d| d.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    DECODING.with(|d| d.set(false));
    result.map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("undecodable message (its decoding panicked: {what})")
    })
}

/// Release the thread waiting for the handshake of a child that died before connecting: connect to its server
/// ourselves, so `accept` returns.
pub fn unblock(name: &str) {
    if let Ok(tx) = IpcSender::<FromChild>::connect(name.to_string()) {
        let _ = tx.send(FromChild::Ready);
    }
}

/// A queue to one child, drained by its own thread (a [`mailbox`], which sleeps at once
/// when empty: see there why not a channel).
#[derive(Debug)]
pub struct Writer {
    queue: Post<ToChild>,
    /// Messages queued and not yet written: the bound on the queue. (A bounded channel
    /// would allocate its whole capacity up front: 100 KB a child, 100 MB for 1,000
    /// workers; this one grows with what is queued.)
    queued: Arc<AtomicUsize>,
}

/// The other end of a [`Writer`]: what the child's thread drains.
struct Queue {
    rx: Mailbox<ToChild>,
    written: Arc<AtomicUsize>,
}

impl Queue {
    /// Write what is queued to the child, in order, until the [`Writer`] is dropped
    /// (everything queued before is still written) or the child is gone (its exit is
    /// reported by the reaper).
    fn write_to(self, sender: IpcSender<ToChild>) {
        for msg in &self.rx {
            let sent = sender.send(msg);
            self.written.fetch_sub(1, Ordering::Relaxed);
            if sent.is_err() {
                return;
            }
        }
    }
}

impl Writer {
    /// A writer and the queue it feeds.
    fn new() -> (Writer, Queue) {
        let (queue, rx) = mailbox::<ToChild>();
        let queued = Arc::new(AtomicUsize::new(0));
        let written = Arc::clone(&queued);
        (Writer { queue, queued }, Queue { rx, written })
    }

    /// Queue a message. `false` when the child has stopped reading (its queue holds
    /// [`WRITE_QUEUE`] messages) or its writer is gone: the caller treats it as
    /// unresponsive.
    pub fn send(&self, msg: ToChild) -> bool {
        if self.queued.load(Ordering::Relaxed) >= WRITE_QUEUE {
            return false;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.queue.send(msg).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// How long the event loop waits for a dead child's channel to close before handling
/// its exit anyway.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

// ----- the child side ----------------------------------------------------------------

/// A child's end: connect to the supervisor, say hello, and get the receiver for
/// messages addressed to us.
pub fn connect(name: &str) -> std::io::Result<(IpcSender<FromChild>, IpcReceiver<ToChild>)> {
    let tx = IpcSender::<FromChild>::connect(name.to_string())?;
    let (to_child, rx) = ipc::channel::<ToChild>().map_err(std::io::Error::other)?;
    tx.send(FromChild::Hello {
        to_child,
        pid: std::process::id(),
    })
    .map_err(std::io::Error::other)?;
    Ok((tx, rx))
}
