//! The feed: every event the supervisor writes, taken from the events file's tap on a
//! thread of its own. It keeps what the API and the metrics tell of the running
//! supervisor (the child table, counters, restarts by minute) and broadcasts each line to
//! the event streams. The supervision loop only ever sends to it, never waits for it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::{Context, Result};
use crossbeam_channel::Receiver;
use supervisor_config::Config;

use crate::commands::{DisabledGroups, Replay};
use crate::events_file::Tapped;
use crate::record::{ChildKind, EventRecord};

/// How many lines an event stream may fall behind before it is ended (its client then
/// reconnects and reads the missed ones from the events file).
const LIVE_BACKLOG: usize = 4096;

/// Minutes of restarts kept per group (the dashboard's sparkline).
pub const RESTART_MINUTES: usize = 60;

/// The upper bounds of `supervisor_job_duration_seconds`'s buckets (`+Inf` besides).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// One line of the events file, as the event streams send it: made into its SSE
/// message once, here, for every stream.
#[derive(Debug, Clone)]
pub struct Live {
    pub seq: u64,
    /// The line of the events file.
    pub line: Arc<str>,
    /// `id: SEQ`, `data: LINE` and the blank line that ends an SSE message.
    pub message: Arc<str>,
}

/// The SSE message of the line `line` of seq `seq` (a line of the events file is one
/// JSON object: no newline inside).
pub fn sse_message(seq: u64, line: &str) -> String {
    format!("id: {seq}\ndata: {line}\n\n")
}

/// A histogram of job durations.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Counts per bucket of [`DURATION_BUCKETS`] (not cumulative), then the overflow.
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        // A duration read from an event is finite and >= 0 (the core's own), but the
        // metrics must not go wrong whatever it says.
        let s = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += s;
        self.count += 1;
    }
}

/// What the feed has gathered since the supervisor started.
#[derive(Debug)]
pub struct FeedState {
    /// The config the supervisor runs on now.
    pub config: Arc<Config>,
    /// The child table, as `status` replays it.
    pub replay: Replay,
    pub last_seq: u64,
    pub last_ts: Option<f64>,
    /// `supervisor_events_total`, by event name.
    pub events: BTreeMap<&'static str, u64>,
    /// `supervisor_child_restarts_total`, by (role, group; "" for the grabber).
    pub restarts: BTreeMap<(&'static str, String), u64>,
    /// `supervisor_job_duration_seconds`, by (group, outcome).
    pub durations: BTreeMap<(String, &'static str), Histogram>,
    /// Restarts scheduled per minute (unix minute, count), per group, the last
    /// [`RESTART_MINUTES`].
    pub restart_minutes: BTreeMap<String, VecDeque<(u64, u64)>>,
    /// Groups that gave up with `on_exhausted: "disable"`, as `explain` tells them.
    pub disabled: DisabledGroups,
}

impl FeedState {
    fn apply(&mut self, t: &Tapped) {
        let e = &t.event;
        self.replay.apply(e);
        self.last_seq = e.seq;
        self.last_ts = Some(e.ts);
        *self.events.entry(e.record.name()).or_default() += 1;
        match &e.record {
            EventRecord::ChildRestartScheduled { child, .. } => {
                let group = child.group.clone().unwrap_or_default();
                let role = match child.role {
                    ChildKind::Grabber => "grabber",
                    ChildKind::Worker => "worker",
                };
                *self.restarts.entry((role, group.clone())).or_default() += 1;
                if child.role == ChildKind::Worker {
                    let minute = minute_of(e.ts);
                    let q = self.restart_minutes.entry(group).or_default();
                    match q.back_mut() {
                        Some((m, n)) if *m == minute => *n += 1,
                        _ => q.push_back((minute, 1)),
                    }
                    while q.len() > RESTART_MINUTES {
                        q.pop_front();
                    }
                }
            }
            EventRecord::JobFinished {
                group,
                outcome,
                duration_s,
                ..
            } => {
                let outcome = outcome_name(*outcome);
                (self.durations.entry((group.clone(), outcome)).or_default()).observe(*duration_s);
            }
            _ => {}
        }
        self.disabled.apply(&e.record);
    }

    /// Workers by group and state (`idle`, `busy`, ...), as the child table has them.
    pub fn workers_by_group(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for row in self.replay.children.values() {
            if let (ChildKind::Worker, Some(g)) = (row.child.role, &row.child.group) {
                *out.entry(g.clone())
                    .or_default()
                    .entry(row.state.clone())
                    .or_default() += 1;
            }
        }
        out
    }

    /// Restarts of `group`'s workers in each of the last [`RESTART_MINUTES`] minutes up
    /// to `now`'s, oldest first.
    pub fn restarts_per_minute(&self, group: &str, now: f64) -> Vec<u64> {
        let current = minute_of(now);
        let first = current.saturating_sub(RESTART_MINUTES as u64 - 1);
        let mut out = vec![0; RESTART_MINUTES];
        for (m, n) in self.restart_minutes.get(group).into_iter().flatten() {
            if (first..=current).contains(m) {
                out[(m - first) as usize] += n;
            }
        }
        out
    }
}

fn minute_of(ts: f64) -> u64 {
    if ts.is_finite() && ts > 0.0 {
        (ts / 60.0) as u64
    } else {
        0
    }
}

fn outcome_name(o: crate::record::JobOutcome) -> &'static str {
    use crate::record::JobOutcome as O;
    match o {
        O::Succeeded => "succeeded",
        O::Failed => "failed",
        O::TimedOut => "timed_out",
        O::Lost => "lost",
        O::Canceled => "canceled",
    }
}

/// The feed, shared by the feed thread and the server.
#[derive(Debug)]
pub struct Feed {
    state: Mutex<FeedState>,
    live: tokio::sync::broadcast::Sender<Live>,
}

impl Feed {
    /// Start the feed thread on the events of `tap`.
    pub fn start(config: Config, tap: Receiver<Tapped>) -> Result<Arc<Feed>> {
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BACKLOG);
        let feed = Arc::new(Feed {
            state: Mutex::new(FeedState {
                config: Arc::new(config),
                replay: Replay::default(),
                last_seq: 0,
                last_ts: None,
                events: BTreeMap::new(),
                restarts: BTreeMap::new(),
                durations: BTreeMap::new(),
                restart_minutes: BTreeMap::new(),
                disabled: DisabledGroups::default(),
            }),
            live,
        });
        let f = feed.clone();
        std::thread::Builder::new()
            .name("http-feed".into())
            .spawn(move || f.run(&tap))
            .context("cannot start the HTTP feed thread")?;
        Ok(feed)
    }

    fn run(&self, tap: &Receiver<Tapped>) {
        while let Ok(first) = tap.recv() {
            // Whatever came meanwhile, under one lock.
            let mut batch = vec![first];
            batch.extend(tap.try_iter().take(1023));
            let mut state = self.state();
            for t in &batch {
                state.apply(t);
            }
            drop(state);
            for t in batch {
                // No stream listening is no error.
                let _ = self.live.send(Live {
                    seq: t.event.seq,
                    message: sse_message(t.event.seq, &t.line).into(),
                    line: t.line,
                });
            }
        }
    }

    /// What the feed has gathered (held briefly: the feed thread waits for it).
    pub fn state(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The config the supervisor runs on now.
    pub fn config(&self) -> Arc<Config> {
        self.state().config.clone()
    }

    pub fn set_config(&self, config: Config) {
        self.state().config = Arc::new(config);
    }

    /// Every line written from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Live> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_their_bucket_whatever_they_are() {
        let mut h = Histogram::default();
        for s in [0.0, 0.01, 0.02, 3600.0, 1e9, f64::NAN, -1.0, f64::INFINITY] {
            h.observe(s);
        }
        assert_eq!(h.count, 8);
        assert_eq!(h.buckets[0], 5, "0, 0.01, NaN, -1 and inf count as 0");
        assert_eq!(h.buckets[1], 1);
        assert_eq!(
            h.buckets[DURATION_BUCKETS.len() - 1],
            1,
            "3600 is in le=3600"
        );
        assert_eq!(h.buckets[DURATION_BUCKETS.len()], 1, "1e9 overflows");
        assert!(h.sum.is_finite());
    }
}
