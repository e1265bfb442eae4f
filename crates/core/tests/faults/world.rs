//! The world of the fault schedules: a simulated shell, children, job processes and job
//! store around the core, with time jumping from one event to the next.

use super::*;

impl Sim {
    pub(super) fn new(plan: &Plan) -> Sim {
        let spec = world_spec(plan);
        let core = Core::new(
            spec.clone(),
            Box::new(SplitMix64::new(plan.seed.wrapping_mul(0x9E37_79B9))),
        );
        let mut sim = Sim {
            core,
            now: Time::ZERO,
            rng: SplitMix64::new(plan.seed),
            crashiness: plan.crashiness,
            queue: BTreeMap::new(),
            seq: 0,
            spec,
            kids: BTreeMap::new(),
            next_pid: 1000,
            grabber: None,
            ledger: Ledger::new(),
            tick_gen: 0,
            epochs: BTreeMap::new(),
            store: BTreeMap::new(),
            procs: BTreeMap::new(),
            steps: 0,
            trace: Vec::new(),
            verbose: std::env::var_os("FAULTS_TRACE").is_some(),
            in_core: BTreeMap::new(),
            assigned: BTreeMap::new(),
            earliest: BTreeMap::new(),
            restarts: BTreeMap::new(),
            started: BTreeSet::new(),
            exited: BTreeSet::new(),
            attempts_open: BTreeSet::new(),
            legacy: BTreeMap::new(),
            disabled: BTreeSet::new(),
            stop_began: None,
            last_hang: Time::ZERO,
            gave_up_exit: false,
            exit: None,
        };
        for (i, j) in plan.jobs.iter().enumerate() {
            let id = i as JobId + 1;
            sim.store.insert(
                id,
                SJob {
                    group: NAMES[j.group].to_string(),
                    timeout: j.timeout,
                    max_attempts: j.max_attempts,
                    used: 0,
                    state: SState::Queued(Time::ZERO),
                    canceled: false,
                },
            );
            if let Some(t) = j.cancel_at {
                sim.schedule(t, Ev::Cancel(id));
            }
        }
        for r in &plan.reloads {
            sim.schedule(r.at, Ev::Reload(r.clone()));
        }
        sim.schedule(
            plan.stop_at,
            Ev::Shell(Input::Shutdown {
                reason: "SIGTERM".into(),
                immediate: plan.immediate,
            }),
        );
        if let Some(after) = plan.second {
            sim.schedule(
                plan.stop_at + after,
                Ev::Shell(Input::Shutdown {
                    reason: "SIGINT".into(),
                    immediate: true,
                }),
            );
        }
        sim
    }

    // ----- plumbing -----------------------------------------------------------------

    pub(super) fn t(&self) -> f64 {
        self.now.since_origin().as_secs_f64()
    }

    pub(super) fn log(&mut self, line: String) {
        if self.verbose {
            eprintln!("{line}");
        }
        if self.trace.len() >= 80 {
            self.trace.remove(0);
        }
        self.trace.push(line);
    }

    #[track_caller]
    pub(super) fn ensure(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            panic!(
                "at t={:.3}: {}\n--- last steps ---\n{}",
                self.t(),
                what(),
                self.trace.join("\n")
            );
        }
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.rng.uniform() < p
    }

    pub(super) fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.rng.uniform()
    }

    pub(super) fn schedule_at(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), ev);
    }

    pub(super) fn schedule(&mut self, at_secs: f64, ev: Ev) {
        self.schedule_at(Time::from_secs_f64(at_secs), ev);
    }

    pub(super) fn after(&mut self, delay: f64, ev: Ev) {
        self.schedule_at(self.now + secs(delay), ev);
    }

    /// A message from `child`, arriving after `delay` but never before its earlier ones.
    pub(super) fn send(&mut self, child: ChildId, delay: f64, input: Input) {
        let now = self.now;
        let Some(k) = self.kids.get_mut(&child) else {
            return;
        };
        if k.gone || k.hung {
            return;
        }
        let at = (now + secs(delay)).max(k.last_msg);
        k.last_msg = at;
        self.schedule_at(at, Ev::Msg(child, input));
    }

    pub(super) fn alive(&self, child: ChildId) -> bool {
        self.kids.get(&child).is_some_and(|k| !k.gone)
    }

    pub(super) fn group_of(&self, child: ChildId) -> Option<String> {
        self.kids
            .get(&child)
            .and_then(|k| k.role.group().map(str::to_string))
    }

    // ----- the run --------------------------------------------------------------------

    pub(super) fn run(&mut self) {
        self.log("t=0 start".to_string());
        self.feed(Input::Start);
        loop {
            self.steps += 1;
            self.ensure(self.steps < 20_000, || "the run does not end".into());
            let world = self.queue.keys().next().map(|k| k.0);
            let core = self.core.next_deadline();
            let from_world = match (world, core) {
                (None, None) => break,
                (Some(w), Some(c)) => w <= c,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if from_world {
                let (key, ev) = self.queue.pop_first().expect("peeked");
                self.now = self.now.max(key.0);
                self.event(ev);
            } else {
                self.now = self.now.max(core.expect("a deadline"));
                self.log(format!("t={:.3} on_timeout", self.t()));
                let acts = self.core.on_timeout(self.now);
                self.ensure(self.exit.is_none() || acts.is_empty(), || {
                    format!("actions after Exit: {acts:?}")
                });
                self.apply(acts);
                let next = self.core.next_deadline();
                self.ensure(next.is_none_or(|n| n > self.now), || {
                    format!("a deadline that stays due: {next:?} (the shell would spin)")
                });
            }
            self.check();
        }
        self.finish();
    }

    pub(super) fn feed(&mut self, input: Input) {
        let brief = format!("{input:?}");
        let reload = matches!(input, Input::Reload(_));
        let acts = self.core.handle(self.now, input);
        self.log(format!("t={:.3} <- {brief}", self.t()));
        self.ensure(self.exit.is_none() || acts.is_empty(), || {
            format!("actions after Exit: {acts:?}")
        });
        if reload {
            self.ensure(
                !acts.iter().any(|a| matches!(a, Action::SignalJob { .. })),
                || format!("a reload interrupted a running job: {acts:?}"),
            );
        }
        self.apply(acts);
    }

    pub(super) fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Shell(input) => {
                match &input {
                    Input::Spawned { child, pid } => {
                        let k = self.kids.get_mut(child).expect("spawned kid");
                        k.pid = Some(*pid);
                    }
                    Input::SpawnFailed { child, .. } => {
                        self.kids.get_mut(child).expect("kid").gone = true;
                        if self.grabber == Some(*child) {
                            self.grabber = None;
                        }
                    }
                    _ => {}
                }
                self.feed(input);
            }
            Ev::Msg(child, input) => self.deliver(child, input),
            Ev::Reap(child, end) => self.reap(child, end),
            Ev::Crash(child) => {
                if self.alive(child) && self.kids[&child].pid.is_some() {
                    self.reap(child, ProcessEnd::Signaled(11));
                }
            }
            Ev::Hang(child) => {
                if let Some(k) = self.kids.get_mut(&child).filter(|k| !k.gone) {
                    k.hung = true;
                    self.last_hang = self.now;
                    self.log(format!("t={:.3} {child} hangs", self.t()));
                }
            }
            Ev::Ready(child) => {
                let ok = self.kids.get(&child).is_some_and(|k| !k.gone && !k.hung);
                if ok {
                    self.kids.get_mut(&child).expect("kid").ready = true;
                    self.send(child, 0.0, Input::Ready { child });
                }
            }
            Ev::JobDone(pid, end) => self.job_done(pid, end),
            Ev::Tick(gen) => {
                if gen == self.tick_gen {
                    self.tick();
                }
            }
            Ev::Reload(r) => self.reload(r),
            Ev::Cancel(job) => {
                if let Some(j) = self.store.get_mut(&job) {
                    j.canceled = true;
                    // `supervisor cancel` settles a queued job in the store itself.
                    if matches!(j.state, SState::Queued(_)) {
                        j.state = SState::Done;
                    }
                }
                self.feed(Input::CancelRequested { job });
            }
        }
    }

    /// A child's message reaches the core.
    pub(super) fn deliver(&mut self, child: ChildId, input: Input) {
        if !self.alive(child) {
            return;
        }
        match &input {
            Input::JobClaimed(job) => {
                let known = self.in_core.insert(job.id, job.attempt);
                self.ensure(known.is_none(), || format!("job {} claimed twice", job.id));
            }
            Input::JobEnded { job, .. } => {
                let was = self.assigned.remove(&child);
                self.ensure(was == Some(*job), || {
                    format!("{child} ended job {job} but the core gave it {was:?}")
                });
            }
            _ => {}
        }
        self.feed(input);
    }

    /// The child dies: everything it sent arrives first, then its exit.
    pub(super) fn reap(&mut self, child: ChildId, end: ProcessEnd) {
        if !self.alive(child) {
            return;
        }
        let keys: Vec<(Time, u64)> = self
            .queue
            .iter()
            .filter(|(_, ev)| matches!(ev, Ev::Msg(c, _) if *c == child))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(Ev::Msg(_, input)) = self.queue.remove(&key) {
                self.deliver(child, input);
            }
        }
        let k = self.kids.get_mut(&child).expect("kid");
        k.gone = true;
        let pid = k.pid.expect("reaped kids were spawned");
        if self.grabber == Some(child) {
            self.grabber = None;
            self.ledger = Ledger::new();
        }
        self.assigned.remove(&child);
        self.feed(Input::Exited { pid, end });
    }

    pub(super) fn job_done(&mut self, pid: u32, end: ProcessEnd) {
        let Some(p) = self.procs.get_mut(&pid).filter(|p| p.alive) else {
            return;
        };
        p.alive = false;
        let job = p.job;
        let worker = self
            .kids
            .iter()
            .find(|(_, k)| !k.gone && k.job == Some((job, pid)))
            .map(|(&c, _)| c);
        if let Some(w) = worker {
            if !self.kids[&w].hung {
                self.kids.get_mut(&w).expect("kid").job = None;
                let d = self.between(0.0, 0.1);
                self.send(
                    w,
                    d,
                    Input::JobEnded {
                        child: w,
                        job,
                        end: Some(end),
                        ran_for: None,
                        start_error: None,
                        reason: None,
                        exited_first: false,
                    },
                );
            }
        }
    }

    pub(super) fn schedule_tick(&mut self, delay: f64) {
        self.tick_gen += 1;
        let g = self.tick_gen;
        self.after(delay, Ev::Tick(g));
    }

    /// The grabber claims one job per credit, oldest first, from the store.
    pub(super) fn tick(&mut self) {
        let Some(g) = self.grabber else { return };
        let k = &self.kids[&g];
        if k.gone || k.hung || !k.ready {
            return;
        }
        let routed = self.spec.groups.iter().map(|g| g.name.as_str());
        let Some(groups) = self.ledger.to_claim(routed) else {
            return;
        };
        for group in groups.into_keys() {
            while self.ledger.credits(&group) > 0 {
                let now = self.now;
                let Some((&id, j)) = self.store.iter_mut().find(|(_, j)| {
                    j.group == group
                        && !j.canceled
                        && matches!(j.state, SState::Queued(at) if at <= now)
                }) else {
                    break;
                };
                let attempt = j.used + 1;
                j.state = SState::Claimed(attempt);
                let (timeout, max_attempts) = (j.timeout.map(secs), j.max_attempts);
                let claim = ClaimedJob {
                    id,
                    group: group.clone(),
                    attempt,
                    timeout,
                    max_attempts,
                    epoch: self.ledger.spend(&group),
                };
                if self.crashiness > 0 && self.chance(0.03) {
                    // Claimed in the store, then died before telling anyone: a stray.
                    self.log(format!("t={:.3} grabber dies holding job {id}", self.t()));
                    self.reap(g, ProcessEnd::Signaled(11));
                    return;
                }
                let d = self.between(0.01, 0.3);
                self.send(g, d, Input::JobClaimed(claim));
            }
        }
        self.report();
        self.schedule_tick(1.0);
    }

    /// The grabber tells whether any routable job is queued or waiting for a retry, when
    /// that is news (like the real one).
    pub(super) fn report(&mut self) {
        let Some(g) = self.grabber else { return };
        if !self.kids[&g].ready {
            return;
        }
        let groups: BTreeSet<&str> = self.spec.groups.iter().map(|g| g.name.as_str()).collect();
        let empty = !self
            .store
            .values()
            .any(|j| matches!(j.state, SState::Queued(_)) && groups.contains(j.group.as_str()));
        if let Some(epoch) = self.ledger.report(empty) {
            self.send(g, 0.05, Input::SourceReport { epoch, empty });
        }
    }

    pub(super) fn reload(&mut self, r: ReloadPlan) {
        let name = NAMES[r.group];
        let mut spec = self.spec.clone();
        let present = spec.groups.iter().position(|g| g.name == name);
        match (r.op, present) {
            (1, Some(i)) if spec.groups.len() > 1 => {
                spec.groups.remove(i);
            }
            (2, Some(i)) => {
                spec.groups[i].job_timeout = (r.n > 0).then(|| secs(r.n as f64 * 1.5));
            }
            (_, Some(i)) => spec.groups[i].max_workers = r.n,
            (_, None) => {
                let plan = GroupPlan {
                    max_workers: r.n.max(1),
                    exit: r.n < 2,
                    jitter: true,
                    max_restarts: 3,
                    timeout: Some(5.0),
                    max_attempts: 2,
                };
                spec.groups.push(group_spec(name, &plan));
            }
        }
        // Jobs running when a pool shrinks may exceed its new size until they end.
        let names: Vec<String> = self.spec.groups.iter().map(|g| g.name.clone()).collect();
        for name in names {
            let old = self.max_workers(&name);
            let new = spec.group(&name).map_or(0, |n| n.max_workers);
            if new < old {
                self.mark_legacy(&name);
            }
        }
        // Groups added (or enabled again) start a fresh restart window.
        for g in &spec.groups {
            if self.spec.group(&g.name).is_none() || self.disabled.contains(&g.name) {
                self.restarts.remove(&Some(g.name.clone()));
            }
            self.disabled.remove(&g.name);
        }
        self.spec = spec.clone();
        self.feed(Input::Reload(spec));
    }

    pub(super) fn max_workers(&self, group: &str) -> u32 {
        if self.disabled.contains(group) {
            return 0;
        }
        self.spec.group(group).map_or(0, |g| g.max_workers)
    }

    pub(super) fn jobs_running_in(&self, group: &str) -> BTreeSet<JobId> {
        self.assigned
            .iter()
            .filter(|(c, _)| self.group_of(**c).as_deref() == Some(group))
            .map(|(_, j)| *j)
            .collect()
    }

    pub(super) fn mark_legacy(&mut self, group: &str) {
        let running = self.jobs_running_in(group);
        self.legacy
            .entry(group.to_string())
            .or_default()
            .extend(running);
    }
}
