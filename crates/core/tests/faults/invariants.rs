//! The core's promises, checked after every step and at the end of a run.

use super::*;

impl Sim {
    pub(super) fn check(&mut self) {
        if let (Some(t0), None) = (self.stop_began, self.exit) {
            let from = t0.max(self.last_hang);
            self.ensure(self.now <= from + secs(STOP_BOUND), || {
                format!("still not stopped {STOP_BOUND} s after the stop began (or the last hang)")
            });
        }
        let rows = self.core.children();
        // A restart that was announced but whose slot is gone (shrunk, removed, stopped)
        // will not happen; a later spawn for that role is a new slot.
        self.earliest
            .retain(|role, _| rows.iter().any(|r| &r.role == role));

        let mut groups: BTreeSet<String> =
            self.spec.groups.iter().map(|g| g.name.clone()).collect();
        groups.extend(
            rows.iter()
                .filter_map(|r| r.role.group().map(str::to_string)),
        );
        for g in groups {
            let slots = rows
                .iter()
                .filter(|r| r.role.group() == Some(g.as_str()))
                .count();
            let busy = self.core.busy_workers(&g);
            let running = self.jobs_running_in(&g);
            self.ensure(busy == running.len(), || {
                format!("group {g}: the core counts {busy} busy, it started {running:?}")
            });
            self.ensure(busy <= slots, || {
                format!("group {g}: {busy} busy in {slots} slots")
            });
            let legacy = self
                .legacy
                .get(&g)
                .map_or(0, |l| l.intersection(&running).count());
            let max = self.max_workers(&g) as usize;
            self.ensure(busy <= max + legacy, || {
                format!("group {g}: {busy} busy, max_workers {max}, {legacy} left from a shrink")
            });

            // Credits: what the grabber holds in the current epoch plus its claims on the
            // way is exactly what the core thinks it granted; with the jobs waiting and
            // running, never more than the group's slots (no prefetch).
            let epoch = self.epochs.get(&g).copied();
            let held = match self.grabber {
                Some(_) if Some(self.ledger.epoch(&g)) == epoch => self.ledger.credits(&g),
                _ => 0,
            };
            let on_the_way = self
                .queue
                .values()
                .filter(|ev| {
                    matches!(ev, Ev::Msg(c, Input::JobClaimed(j))
                        if Some(*c) == self.grabber && j.group == g && Some(j.epoch) == epoch)
                })
                .count() as u32;
            let granted = self.core.credits(&g);
            self.ensure(granted == held + on_the_way, || {
                format!("group {g}: the core granted {granted}, the grabber holds {held} + {on_the_way} claims on the way")
            });
            let pending = self.core.pending_jobs(&g);
            let promised = (held + on_the_way) as usize + pending + busy;
            self.ensure(promised <= slots, || {
                format!("group {g}: {held}+{on_the_way} credits, {pending} pending, {busy} busy in {slots} slots")
            });
        }
    }

    pub(super) fn finish(&mut self) {
        if self.exit.is_none() {
            self.ensure(false, || "the run ended without Exit".into());
        }
        if self.exit.is_some_and(|(t, _)| t < self.now) {
            // Called again by the loop's end: the final checks already ran.
            let acts = self.core.on_timeout(self.now);
            self.ensure(acts.is_empty(), || {
                format!("on_timeout acted after Exit: {acts:?}")
            });
            return;
        }
        self.ensure(self.core.next_deadline().is_none(), || {
            "a deadline after Exit".into()
        });
        self.ensure(self.in_core.is_empty(), || {
            format!("jobs neither recorded nor released: {:?}", self.in_core)
        });
        let alive: Vec<&Kid> = self.kids.values().filter(|k| !k.gone).collect();
        // The last child's Exited is what ends the run; it is marked gone before it is fed.
        self.ensure(alive.is_empty(), || {
            format!("children outlive the supervisor: {alive:?}")
        });
        let procs: Vec<(&u32, &Proc)> = self.procs.iter().filter(|(_, p)| p.alive).collect();
        self.ensure(procs.is_empty(), || {
            format!("job processes outlive their worker: {procs:?}")
        });
        let open = &self.attempts_open;
        self.ensure(open.is_empty(), || {
            format!("job_started without job_finished: {open:?}")
        });
        let unexited: Vec<&u32> = self.started.difference(&self.exited).collect();
        self.ensure(unexited.is_empty(), || {
            format!("child_started without child_exited: {unexited:?}")
        });
    }
}
