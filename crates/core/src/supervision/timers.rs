//! Timers as data, as quinn-proto's `TimerTable`: every deadline is an entry with an
//! instant, and whoever drives the table sleeps until the earliest one.
//!
//! The core keeps one [`TimerTable`] of [`Timer`]s; [`Core::next_deadline`] is its
//! earliest entry and [`Core::on_timeout`] handles the entries that are due. The shell
//! keeps one of its own (`run.rs`: the core's deadline, reloads, exits waiting for their
//! channel, outcomes waiting for the store).
//!
//! [`Core::next_deadline`]: super::Core::next_deadline
//! [`Core::on_timeout`]: super::Core::on_timeout

use std::collections::{BTreeMap, BTreeSet};

use crate::time::Time;

use super::child::{Child, ChildState};
use super::{ChildId, Core, Role};

/// Deadlines by key, each at one instant; the earliest is found without a scan.
///
/// ```
/// use supervisor_core::supervision::TimerTable;
/// use supervisor_core::Time;
///
/// let mut timers = TimerTable::new();
/// timers.set("ping", Time::from_secs_f64(5.0));
/// timers.set("restart", Time::from_secs_f64(0.1));
/// timers.set("ping", Time::from_secs_f64(10.0)); // replaces the first
/// assert_eq!(timers.next_deadline(), Some(Time::from_secs_f64(0.1)));
/// assert_eq!(timers.expire(Time::from_secs_f64(6.0)), ["restart"]);
/// assert_eq!(timers.get(&"ping"), Some(Time::from_secs_f64(10.0)));
/// ```
#[derive(Clone, Debug)]
pub struct TimerTable<K> {
    at: BTreeMap<K, Time>,
    /// The same entries, in the order they come due.
    queue: BTreeSet<(Time, K)>,
}

impl<K: Ord + Clone> Default for TimerTable<K> {
    fn default() -> Self {
        TimerTable {
            at: BTreeMap::new(),
            queue: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> TimerTable<K> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `key` to come due at `at`, replacing its earlier instant.
    pub fn set(&mut self, key: K, at: Time) {
        if let Some(old) = self.at.insert(key.clone(), at) {
            self.queue.remove(&(old, key.clone()));
        }
        self.queue.insert((at, key));
    }

    /// Set `key` to `at`, or stop it when `at` is `None`.
    pub fn set_or_stop(&mut self, key: K, at: Option<Time>) {
        match at {
            Some(at) => self.set(key, at),
            None => {
                self.stop(&key);
            }
        }
    }

    /// Stop `key`; returns when it would have come due.
    pub fn stop(&mut self, key: &K) -> Option<Time> {
        let at = self.at.remove(key)?;
        self.queue.remove(&(at, key.clone()));
        Some(at)
    }

    /// When `key` comes due, if it is set.
    pub fn get(&self, key: &K) -> Option<Time> {
        self.at.get(key).copied()
    }

    /// The earliest instant of any entry.
    pub fn next_deadline(&self) -> Option<Time> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Stop and return every entry due at `now`, in key order (not time order: the
    /// order of the keys is the order in which their owner handles them).
    pub fn expire(&mut self, now: Time) -> Vec<K> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.queue.first() {
            if *at > now {
                break;
            }
            let (_, key) = self.queue.pop_first().expect("first exists");
            self.at.remove(&key);
            due.push(key);
        }
        due.sort();
        due
    }

    /// Stop every entry.
    pub fn clear(&mut self) {
        self.at.clear();
        self.queue.clear();
    }

    /// Whether no entry is set.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

/// What a timer of the core is for. [`Core::on_timeout`](super::Core::on_timeout)
/// handles the due ones in this order, as the variants are declared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The next round of pings, when the core's `FixedIntervalSchedule` says.
    Ping,
    /// A starting child (its pid known) that has not said Ready by then is killed.
    Start(ChildId),
    /// The restart of the grabber or of a worker's slot.
    Restart(Role),
    /// The next step of a busy worker's job: its timeout, then (once stopped) its
    /// SIGKILL, then giving up on a worker that does not report the job's end.
    Job(ChildId),
    /// A stopping child (its pid known) still there then is killed.
    Stop(ChildId),
    /// The end of a graceful stop's grace, while a job runs that was not stopped.
    Grace,
}

impl Core {
    /// Put `id`'s timer in the table as its state says (or take it out, once the child
    /// is gone). Called after every change of a child's state, pid or kill.
    pub(super) fn arm(&mut self, id: ChildId) {
        for timer in [Timer::Start(id), Timer::Job(id), Timer::Stop(id)] {
            self.timers.stop(&timer);
        }
        if let Some((timer, at)) = self.children.get(&id).and_then(|c| self.timer_of(id, c)) {
            self.timers.set(timer, at);
        }
    }

    /// The timer child `id` needs: its start timeout while starting, its stop deadline
    /// while stopping, its job's next step while busy. A child's timers act on its pid,
    /// so it has none until the shell reported the pid, nor once SIGKILL went out: a
    /// deadline with nothing to do would make the shell call `on_timeout` in a busy loop.
    fn timer_of(&self, id: ChildId, c: &Child) -> Option<(Timer, Time)> {
        if c.pid.is_none() || c.killed {
            return None;
        }
        match &c.state {
            ChildState::Starting => {
                Some((Timer::Start(id), c.spawned_at + self.spec.start_timeout))
            }
            ChildState::Busy { job } => {
                let at = job.stop.map_or(job.deadline, |stop| stop.step.due());
                at.map(|at| (Timer::Job(id), at))
            }
            ChildState::Stopping { deadline } => Some((Timer::Stop(id), *deadline)),
            ChildState::Ready | ChildState::Idle => None,
        }
    }

    /// Whether a job runs that no one began to stop: what a graceful stop's grace is for.
    fn unstopped_jobs(&self) -> bool {
        self.children
            .values()
            .any(|c| c.job().is_some_and(|r| r.stop.is_none()))
    }

    /// Once no job runs unstopped, the grace has nothing left to end and leaves the table.
    pub(super) fn settle_grace(&mut self) {
        if self.timers.get(&Timer::Grace).is_some() && !self.unstopped_jobs() {
            self.timers.stop(&Timer::Grace);
        }
    }

    /// The table holds exactly the timers the state asks for: a check of every `handle`
    /// and `on_timeout` in debug builds (the tests).
    #[cfg(debug_assertions)]
    pub(super) fn check_timers(&self) {
        let of_children: Vec<(Timer, Time)> = (self.timers.at.iter())
            .filter(|(k, _)| matches!(k, Timer::Start(_) | Timer::Job(_) | Timer::Stop(_)))
            .map(|(k, at)| (k.clone(), *at))
            .collect();
        let mut wanted: Vec<(Timer, Time)> = (self.children.iter())
            .filter_map(|(&id, c)| self.timer_of(id, c))
            .collect();
        wanted.sort();
        assert_eq!(of_children, wanted, "the children's timers");
        let graceful = matches!(
            self.phase,
            super::Phase::Stopping {
                immediate: false,
                ..
            }
        );
        assert_eq!(
            self.timers.get(&Timer::Grace).is_some(),
            graceful && self.unstopped_jobs(),
            "the grace timer"
        );
        for key in self.timers.at.keys() {
            if let Timer::Restart(role) = key {
                let slot = match role {
                    Role::Grabber => Some(&self.grabber),
                    Role::Worker { group, slot } => {
                        self.groups.get(group).and_then(|g| g.slots.get(slot))
                    }
                };
                let waiting = slot.is_some_and(|s| s.child.is_none());
                assert!(waiting, "a restart of {role} with no slot waiting for it");
            }
        }
        if self.phase == super::Phase::Stopped {
            assert!(self.timers.is_empty(), "timers after the stop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: f64) -> Time {
        Time::from_secs_f64(s)
    }

    #[test]
    fn the_earliest_entry_is_the_next_deadline_and_a_stopped_one_is_gone() {
        let mut timers = TimerTable::new();
        assert_eq!(timers.next_deadline(), None);
        timers.set(2, t(3.0));
        timers.set(1, t(1.0));
        assert_eq!(timers.next_deadline(), Some(t(1.0)));
        assert_eq!(timers.stop(&1), Some(t(1.0)));
        assert_eq!(timers.stop(&1), None);
        assert_eq!(timers.next_deadline(), Some(t(3.0)));
        timers.set_or_stop(2, None);
        assert!(timers.is_empty() && timers.next_deadline().is_none());
    }

    #[test]
    fn setting_a_key_again_moves_it() {
        let mut timers = TimerTable::new();
        timers.set("a", t(1.0));
        timers.set("b", t(2.0));
        timers.set("a", t(5.0));
        assert_eq!(timers.next_deadline(), Some(t(2.0)));
        assert_eq!(timers.expire(t(4.0)), ["b"]);
        assert_eq!(timers.next_deadline(), Some(t(5.0)));
    }

    #[test]
    fn expire_takes_every_due_entry_in_key_order_and_leaves_the_rest() {
        let mut timers = TimerTable::new();
        timers.set(Timer::Grace, t(1.0));
        timers.set(Timer::Stop(1), t(2.0));
        timers.set(Timer::Ping, t(3.0));
        timers.set(Timer::Job(7), t(9.0));
        assert_eq!(
            timers.expire(t(3.0)),
            [Timer::Ping, Timer::Stop(1), Timer::Grace]
        );
        assert_eq!(timers.expire(t(3.0)), []);
        assert_eq!(timers.next_deadline(), Some(t(9.0)));
        timers.clear();
        assert!(timers.is_empty());
    }
}
