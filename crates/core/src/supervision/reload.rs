//! Reload: apply a new config generation without interrupting running jobs; groups
//! removed drain, pools grow and shrink.

use crate::spec::Spec;
use crate::time::Time;

use super::child::ChildState;
use super::timers::Timer;
use super::{Action, ChildId, ClaimedJob, Core, Group, GroupStatus, Phase, Role, Slot};

impl Core {
    /// A reload was asked for: read the config, unless stopping (a stopping supervisor
    /// applies no new config, so it reads none).
    pub(super) fn reload_requested(&mut self) {
        if !self.is_stopping() {
            self.out.push(Action::ReadConfig);
        }
    }

    /// Apply a new config generation without interrupting any running job.
    pub(super) fn reload(&mut self, now: Time, spec: Spec) {
        if self.is_stopping() {
            return;
        }
        let begun = self.out.len();
        let old_names: Vec<String> = self.order.clone();
        let new_names: Vec<String> = spec.groups.iter().map(|g| g.name.clone()).collect();
        // Removed groups drain.
        for name in &old_names {
            if !new_names.contains(name) {
                self.close_group(now, name, GroupStatus::Draining);
            }
        }
        for gs in &spec.groups {
            match self.groups.get_mut(&gs.name) {
                None => {
                    self.epochs += 1;
                    let group = Group::new(gs.clone(), self.epochs);
                    self.groups.insert(gs.name.clone(), group);
                    let slots: Vec<u32> = (0..gs.max_workers).collect();
                    if self.phase == Phase::Running {
                        for slot in slots {
                            self.spawn_worker(now, &gs.name, slot);
                        }
                    }
                }
                Some(g) => {
                    if g.status != GroupStatus::Active {
                        // Back in the config (or a disabled group reloaded): a fresh
                        // start. Its retiring workers are reused by `resize`.
                        g.status = GroupStatus::Active;
                        g.window.clear();
                    }
                    g.spec = gs.clone();
                    self.resize(now, &gs.name);
                }
            }
        }
        self.order = new_names;
        for (name, g) in &self.groups {
            if g.status == GroupStatus::Draining && !self.order.contains(name) {
                self.order.push(name.clone());
            }
        }
        self.spec = Spec {
            groups: spec.groups.clone(),
            ..spec
        };
        // The round of pings already set keeps its time; the next one is the new
        // interval after it.
        self.pings.set_interval(self.spec.heartbeat.interval);
        // Before anything the reload asks of it, the grabber learns the groups that can
        // run jobs now: every group of the new config with workers (a disabled one is
        // given a fresh start).
        self.send_runnable(begun);
        for name in self.order.clone() {
            self.refill(&name);
        }
        self.source_changed();
    }

    /// Bring a group's live slots to `max_workers`: grow at once into the lowest free
    /// slot numbers; shrink by retiring slots waiting for a restart first, then
    /// starting and idle workers, and busy ones last (after their job).
    fn resize(&mut self, now: Time, name: &str) {
        let g = self.groups.get_mut(name).expect("caller checked");
        let want = g.spec.max_workers as usize;
        let live: Vec<u32> = g
            .slots
            .iter()
            .filter(|(_, s)| !s.retiring)
            .map(|(&n, _)| n)
            .collect();
        if live.len() < want {
            let mut missing = want - live.len();
            let mut spawn = Vec::new();
            let mut n = 0u32;
            while missing > 0 {
                match g.slots.get_mut(&n) {
                    Some(s) if s.retiring && s.child.is_some() => {
                        // Retiring but still alive: keep it instead of a new one.
                        s.retiring = false;
                        missing -= 1;
                    }
                    Some(_) => {}
                    None => {
                        g.slots.insert(n, Slot::default());
                        spawn.push(n);
                        missing -= 1;
                    }
                }
                n += 1;
            }
            if self.phase == Phase::Running {
                for slot in spawn {
                    self.spawn_worker(now, name, slot);
                }
            }
            return;
        }
        let excess = live.len() - want;
        if excess == 0 {
            return;
        }
        let rank = |s: &Slot| match s.child.and_then(|c| self.children.get(&c)) {
            None => 0,
            Some(c) => match c.state {
                // Already on its way out (a retiring worker a grow kept): retiring it
                // again costs nothing.
                ChildState::Stopping { .. } => 0,
                ChildState::Starting => 1,
                ChildState::Idle => 2,
                ChildState::Ready | ChildState::Busy { .. } => 3,
            },
        };
        let mut order: Vec<(u8, std::cmp::Reverse<u32>)> = live
            .iter()
            .map(|n| (rank(&g.slots[n]), std::cmp::Reverse(*n)))
            .collect();
        order.sort();
        let retire: Vec<u32> = order.iter().take(excess).map(|(_, r)| r.0).collect();
        let mut stop = Vec::new();
        for n in retire {
            let s = g.slots.get_mut(&n).expect("listed above");
            s.retiring = true;
            self.timers.stop(&Timer::Restart(Role::worker(name, n)));
            match s.child {
                None => {
                    g.slots.remove(&n);
                }
                Some(c) => {
                    if self
                        .children
                        .get(&c)
                        .is_some_and(|c| matches!(c.state, ChildState::Idle | ChildState::Starting))
                    {
                        stop.push(c);
                    }
                }
            }
        }
        // Claimed jobs waiting for a worker beyond what the remaining slots can take
        // (their credits were granted for slots just retired) go back to the queue:
        // holding them would be more jobs than the pool can run.
        let room = g
            .slots
            .values()
            .filter(|s| !s.retiring)
            .filter(|s| {
                s.child
                    .and_then(|c| self.children.get(&c))
                    .is_none_or(|c| c.job().is_none())
            })
            .count();
        let excess: Vec<ClaimedJob> = if g.pending.len() > room {
            g.pending.drain(room..).collect()
        } else {
            Vec::new()
        };
        // Credits promised to workers that are going away come back; `refill` grants
        // what the remaining idle workers can take.
        if g.granted > 0 {
            self.revoke(name);
        }
        for job in excess {
            self.release(job);
        }
        for c in stop {
            self.stop_child(now, c);
        }
    }
    pub(super) fn close_group(&mut self, now: Time, name: &str, status: GroupStatus) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        g.status = status;
        let pending: Vec<ClaimedJob> = g.pending.drain(..).collect();
        for (&n, s) in g.slots.iter_mut() {
            s.retiring = true;
            self.timers.stop(&Timer::Restart(Role::worker(name, n)));
        }
        g.slots.retain(|_, s| s.child.is_some());
        self.revoke(name);
        for job in pending {
            self.release(job);
        }
        let idle: Vec<ChildId> = self.idle_or_starting_workers(name);
        for c in idle {
            self.stop_child(now, c);
        }
        self.forget_group_if_drained(name);
    }

    fn idle_or_starting_workers(&self, group: &str) -> Vec<ChildId> {
        self.children
            .iter()
            .filter(|(_, c)| {
                c.role.group() == Some(group)
                    && matches!(c.state, ChildState::Idle | ChildState::Starting)
            })
            .map(|(&id, _)| id)
            .collect()
    }

    pub(super) fn forget_group_if_drained(&mut self, name: &str) {
        let drained = self
            .groups
            .get(name)
            .is_some_and(|g| g.status == GroupStatus::Draining && g.slots.is_empty());
        if drained {
            self.groups.remove(name);
            self.order.retain(|n| n != name);
        }
    }
}
