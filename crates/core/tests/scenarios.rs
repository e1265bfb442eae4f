//! Scenario tests of the supervision core: one story per rule, on a fake clock.
//!
//! Each test reads as what an operator would watch happen: "at t=1 worker a/0 crashes,
//! its restart is scheduled 0.1 s later, and at t=1.1 it is spawned again". The
//! stories use groups without jitter (see `world::group`) so every delay is exact.

mod world;

use std::time::Duration;

use supervisor_core::spec::OnExhausted;
use supervisor_core::supervision::{
    Action, ChildView, ClaimedJob, Event, Input, Next, Outcome, ProcessEnd, Role, Signal, StateKind,
};
use supervisor_core::Time;
use world::*;

const SIGKILL: ProcessEnd = ProcessEnd::Signaled(9);
const OK: Option<ProcessEnd> = Some(ProcessEnd::Exited(0));
const FAIL: Option<ProcessEnd> = Some(ProcessEnd::Exited(1));

fn restart_scheduled(acts: &[Action]) -> Vec<(Role, Duration, u32)> {
    events(acts)
        .into_iter()
        .filter_map(|e| match e {
            Event::ChildRestartScheduled {
                role,
                delay,
                restarts_in_period,
            } => Some((role, delay, restarts_in_period)),
            _ => None,
        })
        .collect()
}

fn view<'a>(rows: &'a [ChildView], role: &Role) -> &'a ChildView {
    rows.iter()
        .find(|r| &r.role == role)
        .expect("a row for the role")
}

fn crash_exited(role: Role, pid: u32, job_id: Option<i64>) -> Event {
    Event::ChildExited {
        role,
        pid: Some(pid),
        end: Some(SIGKILL),
        expected: false,
        job_id,
        reason: None,
        retired: false,
    }
}

// ----- startup -------------------------------------------------------------------------

#[test]
fn startup_spawns_the_grabber_and_every_pool() {
    let mut s = Story::new(spec(vec![group("a", 2), group("b", 1)]));
    let acts = s.feed(Input::Start);
    assert_eq!(
        spawned_roles(&acts),
        [
            Role::Grabber,
            worker("a", 0),
            worker("a", 1),
            worker("b", 0)
        ]
    );

    // child_started is emitted when the shell reports the pid.
    let started = s.spawn_all(&acts);
    assert_eq!(
        events(&started),
        [
            Event::ChildStarted {
                role: Role::Grabber,
                pid: 100
            },
            Event::ChildStarted {
                role: worker("a", 0),
                pid: 101
            },
            Event::ChildStarted {
                role: worker("a", 1),
                pid: 102
            },
            Event::ChildStarted {
                role: worker("b", 0),
                pid: 103
            },
        ]
    );
    assert!(s
        .core
        .children()
        .iter()
        .all(|r| r.state == StateKind::Starting));

    // A worker's Ready makes it idle; the grabber is not up yet, so no credits.
    for (g, slot) in [("a", 0), ("a", 1), ("b", 0)] {
        let acts = s.feed(Input::Ready {
            child: s.w(g, slot),
        });
        assert!(grants(&acts).is_empty(), "{acts:?}");
        assert_eq!(
            view(&s.core.children(), &worker(g, slot)).state,
            StateKind::Idle
        );
    }

    // The grabber's Ready: the groups it may claim for, one credit per idle worker of
    // each group, then a poll.
    let acts = s.feed(Input::Ready { child: s.grabber() });
    assert_eq!(
        acts,
        [
            Action::GrabberSettings {
                runnable: vec!["a".into(), "b".into()]
            },
            Action::Grant {
                group: "a".into(),
                n: 2,
                epoch: 0
            },
            Action::Grant {
                group: "b".into(),
                n: 1,
                epoch: 0
            },
            Action::Poll { epoch: 0 },
        ]
    );
    assert_eq!(
        view(&s.core.children(), &Role::Grabber).state,
        StateKind::Ready
    );
}

#[test]
fn workers_that_come_up_after_the_grabber_bring_their_credit_with_them() {
    let mut s = Story::new(spec(vec![group("a", 2)]));
    let acts = s.feed(Input::Start);
    s.spawn_all(&acts);
    assert_eq!(grants(&s.feed(Input::Ready { child: s.grabber() })), []);
    let acts = s.feed(Input::Ready { child: s.w("a", 1) });
    assert_eq!(grants(&acts), [("a".into(), 1, 0)]);
    let acts = s.feed(Input::Ready { child: s.w("a", 0) });
    assert_eq!(grants(&acts), [("a".into(), 1, 0)]);
    assert_eq!(s.core.credits("a"), 2);
}

// ----- credits -------------------------------------------------------------------------

#[test]
fn the_grabber_never_holds_more_credits_than_free_workers() {
    let (mut s, boot) = Story::boot(spec(vec![group("a", 2)]));
    assert_eq!(grants(&boot), [("a".into(), 2, 0)]);

    // A claim goes to the lowest idle slot and uses its credit; nothing is re-granted.
    let acts = s.claim(1, "a");
    assert_eq!(started_job(&acts, 1), Some(s.w("a", 0)));
    assert!(grants(&acts).is_empty());
    assert_eq!((s.core.credits("a"), s.core.busy_workers("a")), (1, 1));

    // Anything that makes the core look again grants nothing more: no prefetch.
    let acts = s.feed(Input::Reload(spec(vec![group("a", 2)])));
    assert!(grants(&acts).is_empty(), "{acts:?}");

    let acts = s.claim(2, "a");
    assert_eq!(started_job(&acts, 2), Some(s.w("a", 1)));
    assert_eq!(s.core.credits("a"), 0);
}

#[test]
fn a_finished_job_returns_its_credit_and_asks_for_a_fresh_poll() {
    let (mut s, boot) = Story::boot(spec(vec![group("a", 1)]));
    let first_poll = poll(&boot).unwrap();
    let (w, _) = s.start(1, "a");
    s.at(2.0);
    let acts = s.end(w, 1, OK);
    assert_eq!(grants(&acts), [("a".into(), 1, 0)]);
    let p = poll(&acts).expect("a poll after a job ends");
    assert!(p > first_poll, "a new source epoch: {p} after {first_poll}");
    assert_eq!(s.core.credits("a"), 1);
}

#[test]
fn a_claim_without_an_idle_worker_waits_for_one() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    s.at(1.0);
    // The worker dies while the grabber holds its credit...
    let old = s.w("a", 0);
    s.reap(old, SIGKILL);
    assert_eq!(s.core.credits("a"), 1);
    // ...and the grabber uses it: the job waits for the restarted worker.
    let acts = s.claim(5, "a");
    assert_eq!(started_job(&acts, 5), None);
    assert_eq!(s.core.pending_jobs("a"), 1);
    assert_eq!(s.core.jobs_in_flight(), [5]);

    let acts = s.at(1.1);
    assert_eq!(spawned_roles(&acts), [worker("a", 0)]);
    let acts = s.spawn_all_ready(&acts);
    assert_eq!(started_job(&acts, 5), Some(s.w("a", 0)));
    assert!(grants(&acts).is_empty(), "the credit was used by the claim");
    assert_eq!(s.core.pending_jobs("a"), 0);
}

// ----- revoke and epochs ----------------------------------------------------------------

#[test]
fn shrinking_revokes_credits_with_a_new_epoch_and_old_claims_count_for_nothing() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    assert_eq!(s.core.credits("a"), 2);
    let acts = s.feed(Input::Reload(spec(vec![group("a", 1)])));
    assert_eq!(stopped(&acts), [s.w("a", 1)]);
    let new_epoch = acts
        .iter()
        .find_map(|a| match a {
            Action::Revoke { group, epoch } if group == "a" => Some(*epoch),
            _ => None,
        })
        .expect("a Revoke");
    assert!(new_epoch > 0);
    // The worker left gets its credit again, in the new epoch.
    assert_eq!(grants(&acts), [("a".into(), 1, new_epoch)]);
    assert_eq!(s.core.credits("a"), 1);

    // A claim made with a revoked credit (it raced the Revoke) neither uses a credit
    // nor takes the worker the new credit is for: it goes back to the queue.
    let acts = s.feed(Input::JobClaimed(claim(7, "a", 0)));
    assert_eq!(releases(&acts), [(7, 1)]);
    assert_eq!(started_job(&acts, 7), None);
    assert_eq!(s.core.credits("a"), 1);

    let acts = s.claim(8, "a");
    assert_eq!(started_job(&acts, 8), Some(s.w("a", 0)));
    assert_eq!(s.core.credits("a"), 0);
}

#[test]
fn a_group_removed_and_added_back_gets_credits_in_a_newer_epoch() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1), group("b", 1)]));
    let acts = s.feed(Input::Reload(spec(vec![group("a", 1)])));
    let revoked = s.ledger.epoch("b");
    assert!(revoked > 0, "{acts:?}");
    s.reap(s.w("b", 0), ProcessEnd::Exited(0));
    assert!(s
        .core
        .children()
        .iter()
        .all(|r| r.role.group() != Some("b")));

    // The grabber still knows epoch `revoked` for "b" and ignores older grants.
    let acts = s.feed(Input::Reload(spec(vec![group("a", 1), group("b", 1)])));
    let acts = s.spawn_all_ready(&acts);
    let g = grants(&acts);
    assert_eq!(g.len(), 1, "{acts:?}");
    assert!(g[0].0 == "b" && g[0].1 == 1 && g[0].2 > revoked, "{g:?}");
}

// ----- restarts ------------------------------------------------------------------------

#[test]
fn a_crashed_worker_restarts_after_a_doubling_backoff() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    s.at(1.0);
    let pid = s.pid(s.w("a", 0));
    let acts = s.reap(s.w("a", 0), SIGKILL);
    assert_eq!(
        events(&acts),
        [
            crash_exited(worker("a", 0), pid, None),
            Event::ChildRestartScheduled {
                role: worker("a", 0),
                delay: secs(0.1),
                restarts_in_period: 1
            },
        ]
    );

    // Never before the delay, even when the shell wakes up early.
    assert!(spawned_roles(&s.poke(1.05)).is_empty());
    let acts = s.at(1.1);
    assert_eq!(spawned_roles(&acts), [worker("a", 0)]);
    s.spawn_all_ready(&acts);

    // The second and third crash in a row wait twice as long each time.
    s.at(1.5);
    let acts = s.reap(s.w("a", 0), SIGKILL);
    assert_eq!(restart_scheduled(&acts), [(worker("a", 0), secs(0.2), 2)]);
    assert!(spawned_roles(&s.poke(1.69)).is_empty());
    let acts = s.at(1.7);
    assert_eq!(spawned_roles(&acts), [worker("a", 0)]);
    s.spawn_all(&acts);
    let acts = s.reap(s.w("a", 0), SIGKILL);
    assert_eq!(restart_scheduled(&acts), [(worker("a", 0), secs(0.4), 3)]);
    assert_eq!(view(&s.core.children(), &worker("a", 0)).restarts, 3);
}

#[test]
fn the_backoff_starts_over_after_a_stable_run() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    // stable_after is the backoff's max (30 s) here.
    assert_eq!(s.core.spec().groups[0].restart.stable_after(), secs(30.0));
    s.at(1.0);
    assert_eq!(
        restart_scheduled(&s.reap(s.w("a", 0), SIGKILL))[0].1,
        secs(0.1)
    );
    let acts = s.at(1.1);
    s.spawn_all_ready(&acts);
    s.at(2.0);
    assert_eq!(
        restart_scheduled(&s.reap(s.w("a", 0), SIGKILL))[0].1,
        secs(0.2)
    );
    let acts = s.at(2.2);
    s.spawn_all_ready(&acts);
    // Up (Ready at 2.2) for just under 30 s: the backoff still grows.
    s.at(32.1);
    assert_eq!(
        restart_scheduled(&s.reap(s.w("a", 0), SIGKILL))[0].1,
        secs(0.4)
    );
    let acts = s.at(32.5);
    s.spawn_all_ready(&acts);
    // Up for 30 s: it starts over.
    s.at(62.5);
    assert_eq!(
        restart_scheduled(&s.reap(s.w("a", 0), SIGKILL))[0].1,
        secs(0.1)
    );
}

#[test]
fn too_many_restarts_in_the_period_gives_up_and_exits_with_code_3() {
    let mut a = group("a", 2);
    a.restart.max_restarts = 2;
    let (mut s, _) = Story::boot(spec(vec![a]));
    for t in [1.0, 2.0] {
        s.at(t);
        s.reap(s.w("a", 0), SIGKILL);
        let acts = s.at(t + 0.5);
        s.spawn_all_ready(&acts);
    }
    s.at(3.0);
    let acts = s.reap(s.w("a", 0), SIGKILL);
    let evs = events(&acts);
    assert_eq!(
        evs[1..],
        [
            Event::GroupGaveUp {
                group: Some("a".into()),
                restarts: 3,
                period: secs(60.0),
                action: OnExhausted::Exit
            },
            Event::SupervisorStopping {
                reason: "group a gave up".into()
            },
        ]
    );
    assert!(restart_scheduled(&acts).is_empty());
    let mut to_stop = stopped(&acts);
    to_stop.sort();
    assert_eq!(to_stop, [s.grabber(), s.w("a", 1)]);

    assert_eq!(exit_code(&s.reap(s.grabber(), ProcessEnd::Exited(0))), None);
    let acts = s.reap(s.w("a", 1), ProcessEnd::Exited(0));
    assert_eq!(
        acts[acts.len() - 2..],
        [
            Action::Emit(Event::SupervisorStopped { code: 3 }),
            Action::Exit { code: 3 }
        ]
    );
    assert!(s.core.is_stopped());
    assert_eq!(s.core.next_deadline(), None);
}

#[test]
fn restarts_older_than_the_period_no_longer_count() {
    let mut a = group("a", 1);
    a.restart.max_restarts = 2;
    let (mut s, _) = Story::boot(spec(vec![a]));
    // Worker a/0 crashes at `t` and is up again a second later.
    fn crash(s: &mut Story, t: f64) -> Vec<Action> {
        s.at(t);
        let acts = s.reap(s.w("a", 0), SIGKILL);
        let up = s.at(t + 1.0);
        s.spawn_all_ready(&up);
        acts
    }
    assert_eq!(restart_scheduled(&crash(&mut s, 1.0))[0].2, 1);
    assert_eq!(restart_scheduled(&crash(&mut s, 31.0))[0].2, 2);
    // t=62: the restart of t=1 left the 60 s window.
    assert_eq!(restart_scheduled(&crash(&mut s, 62.0))[0].2, 2);
    // t=70: restarts at 31 and 62 are still inside it; a third is one too many.
    let acts = crash(&mut s, 70.0);
    assert!(restart_scheduled(&acts).is_empty());
    assert!(matches!(
        events(&acts)[1],
        Event::GroupGaveUp { restarts: 3, .. }
    ));
}

#[test]
fn a_disabled_group_stops_while_the_others_keep_running() {
    let (mut s, _) = Story::boot(spec(vec![
        disabling("a", 2, 1),
        group("b", 1),
        group("none", 0),
    ]));
    assert_eq!(
        s.core.runnable_groups(),
        ["a", "b"],
        "a group without workers runs nothing"
    );
    s.at(1.0);
    s.reap(s.w("a", 0), SIGKILL);
    let acts = s.at(1.1);
    s.spawn_all(&acts);
    let acts = s.reap(s.w("a", 0), SIGKILL);
    let evs = events(&acts);
    let gave_up = Event::GroupGaveUp {
        group: Some("a".into()),
        restarts: 2,
        period: secs(60.0),
        action: OnExhausted::Disable,
    };
    assert_eq!(evs[1], gave_up);
    // Right after it, the grabber learns that only b can run jobs now.
    let at = acts
        .iter()
        .position(|a| *a == Action::Emit(gave_up.clone()));
    assert_eq!(
        acts[at.expect("the event") + 1],
        Action::GrabberSettings {
            runnable: vec!["b".into()]
        }
    );
    assert!(!evs
        .iter()
        .any(|e| matches!(e, Event::SupervisorStopping { .. })));
    assert!(restart_scheduled(&acts).is_empty());
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Revoke { group, .. } if group == "a")));
    // Its idle worker stops, and is not restarted once gone.
    assert_eq!(stopped(&acts), [s.w("a", 1)]);
    assert_eq!(s.core.credits("a"), 0);
    assert!(spawned_roles(&s.reap(s.w("a", 1), ProcessEnd::Exited(0))).is_empty());
    assert!(spawned_roles(&s.at(30.0)).is_empty());
    assert!(s
        .core
        .children()
        .iter()
        .all(|r| r.role.group() != Some("a")));

    assert_eq!(s.core.runnable_groups(), ["b"]);

    // Group b goes on: it runs jobs and gets its credit back; a gets none.
    let (w, acts) = s.start(1, "b");
    assert_eq!(w, s.w("b", 0));
    assert!(acts.iter().all(|a| !matches!(a, Action::Release { .. })));
    let acts = s.end(w, 1, OK);
    assert_eq!(grants(&acts), [("b".into(), 1, 0)]);
    assert_eq!(releases(&s.claim(2, "a")), [(2, 1)]);

    // A reload enables it again, and says so to the grabber before anything else.
    let acts = s.feed(Input::Reload(spec(vec![
        disabling("a", 2, 1),
        group("b", 1),
    ])));
    assert_eq!(
        acts[0],
        Action::GrabberSettings {
            runnable: vec!["a".into(), "b".into()]
        }
    );
    assert_eq!(spawned_roles(&acts), [worker("a", 0), worker("a", 1)]);
    assert_eq!(s.core.runnable_groups(), ["a", "b"]);
    let acts = s.spawn_all_ready(&acts);
    assert_eq!(grants(&acts).iter().map(|g| g.1).sum::<u32>(), 2);
}

#[test]
fn a_crashed_grabber_restarts_and_its_strays_are_released() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    s.start(7, "a");
    s.at(1.0);
    let pid = s.pid(s.grabber());
    let acts = s.reap(s.grabber(), SIGKILL);
    assert_eq!(
        acts[..2],
        [
            Action::Emit(crash_exited(Role::Grabber, pid, None)),
            Action::ReleaseStrays { known: vec![7] },
        ]
    );
    assert_eq!(restart_scheduled(&acts), [(Role::Grabber, secs(0.1), 1)]);
    assert_eq!(s.core.credits("a"), 0);
    assert_eq!(s.core.busy_workers("a"), 1, "the job runs on");

    let acts = s.at(1.1);
    assert_eq!(spawned_roles(&acts), [Role::Grabber]);
    let acts = s.spawn_all_ready(&acts);
    // The new grabber gets the one free worker's credit, fresh, and polls.
    assert_eq!(grants(&acts), [("a".into(), 1, 0)]);
    assert!(poll(&acts).is_some());
}

// ----- heartbeat -----------------------------------------------------------------------

#[test]
fn every_child_is_pinged_each_interval() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    for t in [5.0, 10.0] {
        let acts = s.at(t);
        let mut pinged: Vec<_> = acts
            .iter()
            .filter_map(|a| match a {
                Action::Ping { child } => Some(*child),
                _ => None,
            })
            .collect();
        pinged.sort();
        assert_eq!(pinged, [s.grabber(), s.w("a", 0)], "at {t}");
    }
    assert!(s.poke(12.0).is_empty());
}

#[test]
fn a_worker_dead_before_it_said_it_started_its_job_still_announces_the_attempt() {
    // Its attempt was counted at the claim: `job_started` (with the worker's pid) comes
    // before its `job_finished` (lost), as for every attempt.
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let acts = s.claim(1, "a");
    let w = started_job(&acts, 1).expect("went to the worker");
    let pid = s.pid(w);
    let acts = s.reap(w, SIGKILL);
    let ev = events(&acts);
    let started = ev.iter().position(|e| {
        matches!(e, Event::JobStarted { job_id: 1, worker_pid, attempt: 1, .. } if *worker_pid == pid)
    });
    let finished = ev.iter().position(|e| {
        matches!(
            e,
            Event::JobFinished {
                job_id: 1,
                outcome: Outcome::Lost,
                ..
            }
        )
    });
    // ... and before the worker's `child_exited`, so that `status` shows the slot as
    // exited, not as idle after the job.
    let exited = ev
        .iter()
        .position(|e| matches!(e, Event::ChildExited { .. }));
    assert!(
        matches!((started, exited, finished), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "{ev:?}"
    );
    // Given back at a graceful stop instead: nothing is announced.
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let acts = s.claim(1, "a");
    let w = started_job(&acts, 1).expect("went to the worker");
    s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    let acts = s.reap(w, SIGKILL);
    assert!(
        !events(&acts)
            .iter()
            .any(|e| matches!(e, Event::JobStarted { .. } | Event::JobFinished { .. })),
        "{acts:?}"
    );
    assert_eq!(releases(&acts).len(), 1, "{acts:?}");
}

#[test]
fn a_loop_held_up_past_the_timeout_kills_no_child_it_could_not_ping() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    let (w, _) = s.start(3, "a");
    s.at(5.0);
    // The shell's loop was held up for 55 s (a store call waiting on a lock): no ping
    // went out meanwhile, so no child is silent; each is pinged now.
    let acts = s.poke(60.0);
    assert!(killed(&acts).is_empty(), "{acts:?}");
    let pinged = acts
        .iter()
        .filter(|a| matches!(a, Action::Ping { .. }))
        .count();
    assert_eq!(pinged, 3, "{acts:?}");
    // One that does not answer is killed a timeout after that ping.
    s.silent.insert(w);
    assert!(killed(&s.at(79.9)).is_empty());
    assert_eq!(killed(&s.at(80.0)), [(w, Signal::Kill)]);
}

#[test]
fn a_silent_child_is_killed_and_handled_as_a_crash() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    let (w, _) = s.start(3, "a");
    s.silent.insert(w);
    // Heard at t=0, silent since its ping of t=5: at the ping round of t=25 it has
    // been silent for the timeout.
    assert!(killed(&s.at(24.9)).is_empty());
    let acts = s.at(25.0);
    assert_eq!(killed(&acts), [(w, Signal::Kill)]);
    let pid = s.pid(w);
    let acts = s.reap(w, SIGKILL);
    assert_eq!(
        acts[..3],
        [
            Action::Emit(Event::ChildExited {
                role: worker("a", 0),
                pid: Some(pid),
                end: Some(SIGKILL),
                expected: false,
                job_id: Some(3),
                reason: Some("did not answer in time".into()),
                retired: false,
            }),
            Action::KillJobGroup { pgid: job_pid(3) },
            Action::RecordOutcome {
                job: 3,
                attempt: 1,
                outcome: Outcome::Lost,
                end: None,
                next: Next::Retry { delay: secs(1.0) },
                start_error: None,
                reason: None,
            },
        ]
    );
    assert_eq!(restart_scheduled(&acts).len(), 1);
}

#[test]
fn a_child_that_never_says_ready_is_killed_after_the_start_timeout() {
    let mut s = Story::new(spec(vec![group("a", 1)]));
    let acts = s.feed(Input::Start);
    s.spawn_all(&acts);
    s.feed(Input::Ready { child: s.grabber() });
    assert!(killed(&s.at(9.9)).is_empty());
    let acts = s.at(10.0);
    assert_eq!(killed(&acts), [(s.w("a", 0), Signal::Kill)]);
    let acts = s.reap(s.w("a", 0), SIGKILL);
    assert_eq!(restart_scheduled(&acts).len(), 1, "handled as a crash");
}

// ----- jobs ----------------------------------------------------------------------------

#[test]
fn a_job_that_exits_0_succeeds() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    s.at(1.0);
    let (w, acts) = s.start(1, "a");
    assert_eq!(
        events(&acts),
        [Event::JobStarted {
            job_id: 1,
            group: "a".into(),
            slot: 0,
            worker_pid: s.pid(w),
            attempt: 1
        }]
    );
    s.at(3.0);
    let acts = s.end(w, 1, OK);
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Succeeded, Next::Done)]);
    assert_eq!(
        events(&acts),
        [Event::JobFinished {
            job_id: 1,
            group: "a".into(),
            attempt: 1,
            outcome: Outcome::Succeeded,
            end: OK,
            duration: secs(2.0),
            start_error: None,
            reason: None,
        }]
    );
}

#[test]
fn a_jobs_duration_is_what_its_worker_measured_and_a_start_error_is_kept() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    s.at(1.0);
    let (w, _) = s.start(1, "a");
    // The messages arrive 2 s apart, but the worker timed the process at 0.25 s.
    s.at(3.0);
    let acts = s.feed(Input::JobEnded {
        child: w,
        job: 1,
        end: Some(ProcessEnd::Exited(3)),
        ran_for: Some(Duration::from_millis(250)),
        start_error: None,
        reason: None,
        exited_first: false,
    });
    let finished = events(&acts);
    assert!(
        matches!(&finished[0], Event::JobFinished { duration, .. } if *duration == Duration::from_millis(250)),
        "{finished:?}"
    );
    // A command that cannot start: failed, with the reason in the record and the event.
    // Its worker never says it started, yet its attempt has a `job_started` before its
    // `job_finished`, as every attempt has.
    let acts = s.feed(Input::JobClaimed(claim(2, "a", s.ledger.epoch("a"))));
    let w = started_job(&acts, 2).expect("the job went to a worker");
    let acts = s.feed(Input::JobEnded {
        child: w,
        job: 2,
        end: None,
        ran_for: None,
        start_error: Some("cannot run `nosuch`: No such file or directory".into()),
        reason: None,
        exited_first: false,
    });
    assert!(
        acts.iter().any(|a| matches!(a,
        Action::RecordOutcome { job: 2, outcome: Outcome::Failed, start_error: Some(e), .. }
            if e.contains("No such file"))),
        "{acts:?}"
    );
    let evs = events(&acts);
    assert!(
        matches!(
            &evs[..2],
            [
                Event::JobStarted {
                    job_id: 2,
                    attempt: 1,
                    ..
                },
                Event::JobFinished {
                    job_id: 2,
                    start_error: Some(_),
                    reason: None,
                    ..
                }
            ]
        ),
        "{evs:?}"
    );
}

/// A worker that knows why its job ended (the OOM killer acted on the group's memory
/// limit) says so; the reason goes into the stored outcome and `job_finished`.
#[test]
fn a_reason_the_worker_gives_is_kept_in_the_record_and_the_event() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    s.at(1.0);
    let (w, _) = s.start(1, "a");
    let acts = s.feed(Input::JobEnded {
        child: w,
        job: 1,
        end: Some(ProcessEnd::Signaled(9)),
        ran_for: None,
        start_error: None,
        reason: Some("killed for its memory limit (memory_max_bytes 1048576)".into()),
        exited_first: false,
    });
    assert!(
        acts.iter().any(|a| matches!(a,
            Action::RecordOutcome { job: 1, outcome: Outcome::Failed, reason: Some(r), .. }
                if r.contains("memory limit"))),
        "{acts:?}"
    );
    assert!(
        events(&acts).iter().any(|e| matches!(e,
            Event::JobFinished { job_id: 1, reason: Some(r), .. } if r.contains("memory limit"))),
        "{acts:?}"
    );
}

#[test]
fn a_failed_job_is_retried_after_the_retry_backoff_until_it_is_dead() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let attempt = |s: &mut Story, n: u32| {
        let mut job = claim(1, "a", 0);
        job.attempt = n;
        let (w, _) = s.run_job(job);
        s.end(w, 1, FAIL)
    };
    let acts = attempt(&mut s, 1);
    assert_eq!(
        outcomes(&acts),
        [(1, 1, Outcome::Failed, Next::Retry { delay: secs(1.0) })]
    );
    assert_eq!(
        events(&acts)[1],
        Event::JobRetryScheduled {
            job_id: 1,
            attempt: 1,
            delay: secs(1.0)
        }
    );
    let acts = attempt(&mut s, 2);
    assert_eq!(
        outcomes(&acts),
        [(1, 2, Outcome::Failed, Next::Retry { delay: secs(2.0) })]
    );
    let acts = attempt(&mut s, 3);
    assert_eq!(outcomes(&acts), [(1, 3, Outcome::Failed, Next::Dead)]);
    assert_eq!(
        events(&acts)[1],
        Event::JobDead {
            job_id: 1,
            attempts: 3,
            reason: None,
        }
    );
}

#[test]
fn a_job_the_store_refused_is_reported_dead_with_its_reason() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let acts = s.feed(Input::JobRefused {
        job: 9,
        attempts: 2,
        reason: "its supervisor died while running it 3 times".into(),
    });
    assert_eq!(
        events(&acts),
        [Event::JobDead {
            job_id: 9,
            attempts: 2,
            reason: Some("its supervisor died while running it 3 times".into()),
        }]
    );
}

#[test]
fn a_jobs_own_limits_win_over_its_groups() {
    let mut a = group("a", 2);
    a.max_attempts = 1;
    let (mut s, _) = Story::boot(spec(vec![a]));
    // Two attempts of its own where the group allows one; 5 s where the group allows 3600.
    let job = ClaimedJob {
        max_attempts: Some(2),
        timeout: Some(secs(5.0)),
        ..claim(1, "a", 0)
    };
    let (w, _) = s.run_job(job);
    assert!(job_signals(&s.at(4.9)).is_empty());
    assert_eq!(job_signals(&s.at(5.0)), [(1, Signal::Term)]);
    let acts = s.end(w, 1, Some(ProcessEnd::Signaled(15)));
    assert_eq!(
        outcomes(&acts),
        [(1, 1, Outcome::TimedOut, Next::Retry { delay: secs(1.0) })]
    );

    // Fewer attempts of its own than the group's.
    let mut a = group("a", 1);
    a.max_attempts = 5;
    let (mut s, _) = Story::boot(spec(vec![a]));
    let (w, _) = s.run_job(ClaimedJob {
        max_attempts: Some(1),
        ..claim(2, "a", 0)
    });
    assert_eq!(
        outcomes(&s.end(w, 2, FAIL)),
        [(2, 1, Outcome::Failed, Next::Dead)]
    );
}

#[test]
fn a_job_past_its_deadline_gets_term_then_kill_and_is_timed_out() {
    let mut a = group("a", 1);
    a.job_timeout = Some(secs(10.0));
    let (mut s, _) = Story::boot(spec(vec![a]));
    let (w, _) = s.start(1, "a");
    assert!(job_signals(&s.at(9.9)).is_empty());
    assert_eq!(job_signals(&s.at(10.0)), [(1, Signal::Term)]);
    assert!(job_signals(&s.at(14.9)).is_empty());
    assert_eq!(job_signals(&s.at(15.0)), [(1, Signal::Kill)]);
    assert!(job_signals(&s.at(60.0)).is_empty(), "one KILL is enough");
    let acts = s.end(w, 1, Some(SIGKILL));
    assert_eq!(
        outcomes(&acts),
        [(1, 1, Outcome::TimedOut, Next::Retry { delay: secs(1.0) })]
    );
}

#[test]
fn a_worker_that_never_reports_its_killed_job_is_killed_itself() {
    let mut a = group("a", 1);
    a.job_timeout = Some(secs(10.0));
    let (mut s, _) = Story::boot(spec(vec![a]));
    let (w, _) = s.start(1, "a");
    assert_eq!(job_signals(&s.at(10.0)), [(1, Signal::Term)]);
    assert_eq!(job_signals(&s.at(15.0)), [(1, Signal::Kill)]);
    // The job does not end (a process stuck in the kernel, a wedged worker thread)...
    assert!(killed(&s.at(19.9)).is_empty());
    // ...so after one more grace the worker goes, and the job with it: timed out, as
    // the reason it was being stopped says, and the slot restarts.
    assert_eq!(killed(&s.at(20.0)), [(w, Signal::Kill)]);
    assert!(killed(&s.at(60.0)).is_empty(), "killed once");
    assert_eq!(s.core.next_deadline().map(|t| t > s.now), Some(true));
    let acts = s.reap(w, SIGKILL);
    assert_eq!(
        outcomes(&acts),
        [(1, 1, Outcome::TimedOut, Next::Retry { delay: secs(1.0) })]
    );
    assert_eq!(restart_scheduled(&acts).len(), 1);
}

#[test]
fn a_graceful_stop_ends_even_when_a_worker_never_reports_its_job() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    // Grace (10 s), then TERM, KILL after the kill grace, then the worker itself.
    let mut acts = Vec::new();
    for t in 1..=40 {
        acts.extend(s.at(f64::from(t)));
    }
    assert!(killed(&acts).contains(&(w, Signal::Kill)), "{acts:?}");
    s.reap(s.grabber(), SIGKILL);
    let acts = s.reap(w, SIGKILL);
    assert_eq!(releases(&acts), [(1, 1)], "requeued, not failed: {acts:?}");
    assert_eq!(exit_code(&acts), Some(0));
}

#[test]
fn a_command_that_cannot_start_fails() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let acts = s.claim(1, "a");
    let w = started_job(&acts, 1).unwrap();
    let acts = s.end(w, 1, None);
    assert_eq!(
        outcomes(&acts),
        [(1, 1, Outcome::Failed, Next::Retry { delay: secs(1.0) })]
    );
}

#[test]
fn a_worker_dying_under_its_job_loses_the_job_at_once() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.at(2.0);
    let acts = s.reap(w, ProcessEnd::Signaled(11));
    assert!(matches!(
        &events(&acts)[0],
        Event::ChildExited {
            job_id: Some(1),
            expected: false,
            ..
        }
    ));
    assert_eq!(acts[1], Action::KillJobGroup { pgid: job_pid(1) });
    assert_eq!(
        outcomes(&acts),
        [(1, 1, Outcome::Lost, Next::Retry { delay: secs(1.0) })]
    );
    assert!(events(&acts).contains(&Event::JobFinished {
        job_id: 1,
        group: "a".into(),
        attempt: 1,
        outcome: Outcome::Lost,
        end: None,
        duration: secs(2.0),
        start_error: None,
        reason: None,
    }));
    assert_eq!(restart_scheduled(&acts).len(), 1);
}

#[test]
fn a_canceled_running_job_gets_term_then_kill_and_is_never_retried() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.at(1.0);
    assert_eq!(
        job_signals(&s.feed(Input::CancelRequested { job: 1 })),
        [(1, Signal::Term)]
    );
    assert!(job_signals(&s.feed(Input::CancelRequested { job: 1 })).is_empty());
    assert_eq!(job_signals(&s.at(6.0)), [(1, Signal::Kill)]);
    let acts = s.end(w, 1, Some(SIGKILL));
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Canceled, Next::Done)]);
    assert!(!events(&acts)
        .iter()
        .any(|e| matches!(e, Event::JobRetryScheduled { .. })));
}

/// The end of a job whose main process exited on its own before any signal reached
/// it, reported once what it left is gone.
fn ended_first(
    s: &mut Story,
    w: supervisor_core::supervision::ChildId,
    job: i64,
    end: ProcessEnd,
) -> Vec<Action> {
    s.feed(Input::JobEnded {
        child: w,
        job,
        end: Some(end),
        ran_for: None,
        start_error: None,
        reason: None,
        exited_first: true,
    })
}

#[test]
fn a_stop_asked_while_a_finished_jobs_stragglers_go_does_not_make_its_outcome() {
    // Cancel: the job had succeeded already.
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::CancelRequested { job: 1 });
    let acts = ended_first(&mut s, w, 1, ProcessEnd::Exited(0));
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Succeeded, Next::Done)]);
    // Cancel of one that had failed: canceled, not retried (the store would not queue it
    // again, and the events must say what the store says).
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::CancelRequested { job: 1 });
    let acts = ended_first(&mut s, w, 1, ProcessEnd::Exited(3));
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Canceled, Next::Done)]);
    // Shutdown: it is not put back to run again.
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    // The grace is over: SIGTERM went out (through the worker, too late for the job).
    s.at(31.0);
    let acts = ended_first(&mut s, w, 1, ProcessEnd::Exited(3));
    assert!(releases(&acts).is_empty(), "{acts:?}");
    assert_eq!(
        outcomes(&acts),
        [(1, 1, Outcome::Failed, Next::Retry { delay: secs(1.0) })]
    );
    // Without it, the stop decides, as before.
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::CancelRequested { job: 1 });
    let acts = s.end(w, 1, Some(ProcessEnd::Exited(0)));
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Canceled, Next::Done)]);
}

#[test]
fn an_immediate_stop_kills_the_group_itself_so_the_workers_word_does_not_count() {
    // The core SIGKILLs the job's group directly: the worker passed on no signal and
    // says so, yet the job died of the stop; it goes back to the queue.
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::Shutdown {
        reason: "SIGINT".into(),
        immediate: true,
    });
    let acts = ended_first(&mut s, w, 1, SIGKILL);
    assert_eq!(releases(&acts), [(1, 1)]);
    assert!(outcomes(&acts).is_empty());
    // Its end said before the stop still counts.
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::JobExited {
        child: w,
        job: 1,
        end: ProcessEnd::Exited(0),
    });
    s.feed(Input::Shutdown {
        reason: "SIGINT".into(),
        immediate: true,
    });
    let acts = ended_first(&mut s, w, 1, ProcessEnd::Exited(0));
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Succeeded, Next::Done)]);
}

#[test]
fn a_worker_dying_while_it_kills_what_a_finished_job_left_does_not_lose_the_job() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::JobExited {
        child: w,
        job: 1,
        end: ProcessEnd::Exited(0),
    });
    let acts = s.reap(w, SIGKILL);
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Succeeded, Next::Done)]);
    // Without that word, the job is lost, as ever.
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    let acts = s.reap(w, SIGKILL);
    assert_eq!(
        outcomes(&acts),
        [(1, 1, Outcome::Lost, Next::Retry { delay: secs(1.0) })]
    );
}

#[test]
fn a_canceled_job_still_waiting_for_a_worker_never_runs() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    s.reap(s.w("a", 0), SIGKILL);
    s.claim(4, "a");
    assert_eq!(s.core.pending_jobs("a"), 1);
    let acts = s.feed(Input::CancelRequested { job: 4 });
    assert_eq!(outcomes(&acts), [(4, 1, Outcome::Canceled, Next::Done)]);
    assert_eq!(s.core.pending_jobs("a"), 0);
    let acts = s.at(0.1);
    let acts = s.spawn_all_ready(&acts);
    assert_eq!(started_job(&acts, 4), None);
    // Its credit comes back with the worker.
    assert_eq!(grants(&acts), [("a".into(), 1, 0)]);
}

#[test]
fn outcomes_are_stored_before_they_are_announced() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let stored_first = |acts: &[Action]| {
        let stored = acts
            .iter()
            .position(|a| matches!(a, Action::RecordOutcome { .. }))
            .unwrap();
        let told = acts
            .iter()
            .position(|a| matches!(a, Action::Emit(Event::JobFinished { .. })))
            .unwrap();
        stored < told
    };
    let (w, _) = s.start(1, "a");
    let acts = s.end(w, 1, FAIL);
    assert!(stored_first(&acts), "{acts:?}");
    // The same when the worker dies under the job.
    let (w, _) = s.start(2, "a");
    let acts = s.reap(w, SIGKILL);
    assert!(stored_first(&acts), "{acts:?}");
}

#[test]
fn the_grabber_claims_nothing_while_outcomes_wait_for_the_store() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let waiting = |waiting| Input::OutcomesWaiting { waiting };
    assert_eq!(s.feed(waiting(true)), [Action::HoldClaims { hold: true }]);
    assert_eq!(s.feed(waiting(true)), [], "said once");
    // A grabber that comes up meanwhile is told to hold before it gets credits.
    s.reap(s.grabber(), SIGKILL);
    let acts = s.at(0.5);
    s.spawn_all(&acts);
    let acts = s.feed(Input::Ready { child: s.grabber() });
    assert_eq!(
        acts[..3],
        [
            Action::GrabberSettings {
                runnable: vec!["a".into()]
            },
            Action::HoldClaims { hold: true },
            Action::Grant {
                group: "a".into(),
                n: 1,
                epoch: 0
            },
        ]
    );
    assert_eq!(s.feed(waiting(false)), [Action::HoldClaims { hold: false }]);
    // A grabber that comes up with nothing waiting is not told to hold.
    s.reap(s.grabber(), SIGKILL);
    let acts = s.at(1.0);
    s.spawn_all(&acts);
    let acts = s.feed(Input::Ready { child: s.grabber() });
    assert!(!acts.iter().any(|a| matches!(a, Action::HoldClaims { .. })));
}

// ----- reload --------------------------------------------------------------------------

#[test]
fn a_reload_asked_for_reads_the_config_unless_the_supervisor_is_stopping() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    assert_eq!(s.feed(Input::ReloadRequested), [Action::ReadConfig]);
    s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    assert_eq!(s.feed(Input::ReloadRequested), []);
}

#[test]
fn a_reload_that_adds_a_group_starts_its_pool() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let acts = s.feed(Input::Reload(spec(vec![group("a", 1), group("b", 2)])));
    assert_eq!(spawned_roles(&acts), [worker("b", 0), worker("b", 1)]);
    let acts = s.spawn_all_ready(&acts);
    assert_eq!(grants(&acts).iter().map(|g| g.1).sum::<u32>(), 2);
    assert!(grants(&acts).iter().all(|g| g.0 == "b"));
}

#[test]
fn a_removed_group_drains_its_busy_worker_and_stops_its_idle_ones() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1), group("b", 2)]));
    let (busy, _) = s.start(1, "b");
    let idle = s.w("b", 1);
    let acts = s.feed(Input::Reload(spec(vec![group("a", 1)])));
    assert_eq!(stopped(&acts), [idle]);
    assert!(
        job_signals(&acts).is_empty(),
        "a running job is never interrupted"
    );
    assert!(grants(&acts).is_empty());
    assert_eq!(s.core.credits("b"), 0);
    // A claim still routed to it goes back to the queue.
    assert_eq!(releases(&s.claim(2, "b")), [(2, 1)]);

    // The busy worker finishes its job, which is recorded, then stops.
    s.at(3.0);
    assert!(job_signals(&s.at(100.0)).is_empty());
    let acts = s.end(busy, 1, OK);
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Succeeded, Next::Done)]);
    assert_eq!(stopped(&acts), [busy]);
    assert!(grants(&acts).is_empty());
    assert!(spawned_roles(&s.reap(idle, ProcessEnd::Exited(0))).is_empty());
    assert!(spawned_roles(&s.reap(busy, ProcessEnd::Exited(0))).is_empty());
    assert!(s
        .core
        .children()
        .iter()
        .all(|r| r.role.group() != Some("b")));
}

#[test]
fn a_growing_pool_spawns_at_once_into_the_lowest_free_slots() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 3)]));
    s.start(1, "a");
    s.start(2, "a");
    s.start(3, "a");
    // Free slot 1 (its job ends, then a shrink retires it: idle first).
    s.end(s.w("a", 1), 2, OK);
    let acts = s.feed(Input::Reload(spec(vec![group("a", 2)])));
    assert_eq!(stopped(&acts), [s.w("a", 1)]);
    s.reap(s.w("a", 1), ProcessEnd::Exited(0));
    let acts = s.feed(Input::Reload(spec(vec![group("a", 4)])));
    assert_eq!(spawned_roles(&acts), [worker("a", 1), worker("a", 3)]);
}

#[test]
fn a_shrinking_pool_retires_idle_workers_first_and_busy_ones_after_their_job() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 3)]));
    // Slot 1 busy, slots 0 and 2 idle: shrinking to 1 stops both idle ones.
    let (w1, _) = s.run_job(claim(1, "a", 0));
    assert_eq!(w1, s.w("a", 0));
    let (w2, _) = s.run_job(claim(2, "a", 0));
    assert_eq!(w2, s.w("a", 1));
    s.end(w1, 1, OK);
    let acts = s.feed(Input::Reload(spec(vec![group("a", 1)])));
    let mut st = stopped(&acts);
    st.sort();
    assert_eq!(st, [s.w("a", 0), s.w("a", 2)]);
    assert!(job_signals(&acts).is_empty());
    assert_eq!(s.core.busy_workers("a"), 1);

    // Both busy: shrinking stops nobody now, and the highest slot after its job.
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    let (w0, _) = s.start(1, "a");
    let (w1, _) = s.start(2, "a");
    let acts = s.feed(Input::Reload(spec(vec![group("a", 1)])));
    assert!(stopped(&acts).is_empty() && job_signals(&acts).is_empty());
    let acts = s.end(w1, 2, OK);
    assert_eq!(stopped(&acts), [w1]);
    assert!(grants(&acts).is_empty());
    let acts = s.end(w0, 1, OK);
    assert!(stopped(&acts).is_empty());
    assert_eq!(grants(&acts).len(), 1);
    assert!(spawned_roles(&s.reap(w1, ProcessEnd::Exited(0))).is_empty());
}

#[test]
fn a_retiring_worker_that_crashes_under_its_job_says_its_slot_is_gone() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    let (w0, _) = s.start(1, "a");
    let (w1, _) = s.start(2, "a");
    s.feed(Input::Reload(spec(vec![group("a", 1)])));
    // Slot 1 retires after its job; it crashes first: its job is lost, nothing restarts,
    // and the exit says the slot is gone (for `status` to forget it).
    let acts = s.reap(w1, SIGKILL);
    assert!(matches!(
        &events(&acts)[0],
        Event::ChildExited {
            job_id: Some(2),
            expected: false,
            retired: true,
            ..
        }
    ));
    assert!(spawned_roles(&acts).is_empty());
    assert!(!events(&acts)
        .iter()
        .any(|e| matches!(e, Event::ChildRestartScheduled { .. })));
    // Slot 0 stays: its crash is not a retirement.
    let acts = s.reap(w0, SIGKILL);
    assert!(matches!(
        &events(&acts)[0],
        Event::ChildExited { retired: false, .. }
    ));
}

#[test]
fn a_shrink_gives_back_claimed_jobs_the_smaller_pool_cannot_take() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    s.start(1, "a");
    // Slot 1 dies with its credit out; the grabber uses the credit.
    s.reap(s.w("a", 1), SIGKILL);
    s.claim(2, "a");
    assert_eq!(s.core.pending_jobs("a"), 1);
    // Shrinking to one slot leaves no slot for job 2.
    let acts = s.feed(Input::Reload(spec(vec![group("a", 1)])));
    assert_eq!(releases(&acts), [(2, 1)]);
    assert_eq!(s.core.pending_jobs("a"), 0);
    assert!(job_signals(&acts).is_empty());
    assert!(spawned_roles(&s.at(5.0)).is_empty(), "slot 1 is gone");
}

#[test]
fn a_changed_job_timeout_applies_to_the_next_job_not_the_running_one() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    let mut a = group("a", 1);
    a.job_timeout = Some(secs(5.0));
    let acts = s.feed(Input::Reload(spec(vec![a])));
    assert!(job_signals(&acts).is_empty());
    assert!(
        job_signals(&s.at(100.0)).is_empty(),
        "job 1 keeps its 3600 s"
    );
    s.end(w, 1, OK);
    s.start(2, "a");
    assert!(job_signals(&s.at(104.9)).is_empty());
    assert_eq!(job_signals(&s.at(105.0)), [(2, Signal::Term)]);
}

// ----- shutdown ------------------------------------------------------------------------

#[test]
fn a_graceful_stop_waits_for_jobs_up_to_the_grace_then_terms_kills_and_requeues_them() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    let (w, _) = s.start(1, "a");
    s.at(1.0);
    let acts = s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    assert_eq!(
        events(&acts),
        [Event::SupervisorStopping {
            reason: "SIGTERM".into()
        }]
    );
    let mut st = stopped(&acts);
    st.sort();
    assert_eq!(st, [s.grabber(), s.w("a", 1)]);
    assert!(job_signals(&acts).is_empty());
    s.reap(s.grabber(), ProcessEnd::Exited(0));
    s.reap(s.w("a", 1), ProcessEnd::Exited(0));
    // Claims are no longer taken.
    assert_eq!(
        releases(&s.feed(Input::JobClaimed(claim(9, "a", 0)))),
        [(9, 1)]
    );

    // The job is left alone for the grace (30 s), then TERM, then KILL 5 s later.
    assert!(job_signals(&s.at(30.9)).is_empty());
    assert_eq!(job_signals(&s.at(31.0)), [(1, Signal::Term)]);
    assert_eq!(job_signals(&s.at(36.0)), [(1, Signal::Kill)]);
    let acts = s.end(w, 1, Some(SIGKILL));
    assert_eq!(
        releases(&acts),
        [(1, 1)],
        "back to the queue, no attempt used"
    );
    assert!(outcomes(&acts).is_empty());
    assert_eq!(stopped(&acts), [w]);
    let acts = s.reap(w, ProcessEnd::Exited(0));
    assert_eq!(
        acts[acts.len() - 2..],
        [
            Action::Emit(Event::SupervisorStopped { code: 0 }),
            Action::Exit { code: 0 }
        ]
    );
    assert!(s
        .core
        .handle(s.now, Input::JobClaimed(claim(10, "a", 0)))
        .is_empty());
    assert!(s.poke(100.0).is_empty());
}

#[test]
fn a_job_that_finishes_within_the_grace_is_recorded_as_usual() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    s.at(10.0);
    let acts = s.end(w, 1, OK);
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Succeeded, Next::Done)]);
    assert_eq!(stopped(&acts), [w]);
    assert!(grants(&acts).is_empty() && poll(&acts).is_none());
}

#[test]
fn children_that_ignore_stop_are_killed_after_the_kill_grace() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    assert!(killed(&s.at(4.9)).is_empty());
    let mut k = killed(&s.at(5.0));
    k.sort_by_key(|k| k.0);
    assert_eq!(
        k,
        [(s.grabber(), Signal::Kill), (s.w("a", 0), Signal::Kill)]
    );
    s.reap(s.grabber(), SIGKILL);
    let acts = s.reap(s.w("a", 0), SIGKILL);
    assert!(matches!(
        &events(&acts)[0],
        Event::ChildExited { expected: true, .. }
    ));
    assert_eq!(exit_code(&acts), Some(0));
}

#[test]
fn a_second_interrupt_kills_every_child_and_job_at_once() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    let (w, _) = s.start(1, "a");
    // The first is a graceful stop: the job may finish.
    let acts = s.feed(Input::Interrupt);
    assert_eq!(
        events(&acts),
        [Event::SupervisorStopping {
            reason: "SIGINT".into()
        }]
    );
    assert!(killed(&acts).is_empty() && job_signals(&acts).is_empty());
    s.at(2.0);
    let acts = s.feed(Input::Interrupt);
    assert_eq!(
        events(&acts),
        [Event::SupervisorStopping {
            reason: "second SIGINT".into()
        }]
    );
    assert!(acts.contains(&Action::KillJobGroup { pgid: job_pid(1) }));
    let mut k = killed(&acts);
    k.sort_by_key(|k| k.0);
    let mut all = vec![
        (s.grabber(), Signal::Kill),
        (s.w("a", 0), Signal::Kill),
        (s.w("a", 1), Signal::Kill),
    ];
    all.sort_by_key(|k| k.0);
    assert_eq!(k, all);
    s.reap(s.grabber(), SIGKILL);
    s.reap(s.w("a", 1), SIGKILL);
    let acts = s.reap(w, SIGKILL);
    assert_eq!(releases(&acts), [(1, 1)]);
    assert_eq!(exit_code(&acts), Some(0));
}

#[test]
fn an_interrupt_after_a_sigterm_is_the_first_and_only_a_second_one_stops_at_once() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    s.start(1, "a");
    s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    // Already stopping gracefully: nothing new.
    assert_eq!(s.feed(Input::Interrupt), []);
    let acts = s.feed(Input::Interrupt);
    assert!(acts.contains(&Action::KillJobGroup { pgid: job_pid(1) }));
    assert!(events(&acts).contains(&Event::SupervisorStopping {
        reason: "second SIGINT".into()
    }));
}

/// A supervisor that lost its lease in a shared store stops at once with exit code 1,
/// which `supervisor_stopped` says too, and gives back nothing: its jobs are the others'
/// to requeue, and the store is not ours to write to any more.
#[test]
fn a_fenced_supervisor_kills_everything_gives_back_nothing_and_stops_with_code_1() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    let (w, _) = s.start(1, "a");
    let (w2, _) = s.start(2, "a");
    let acts = s.feed(Input::Fenced {
        reason: "fenced: the store unreachable for 23 s".into(),
    });
    assert!(acts.contains(&Action::KillJobGroup { pgid: job_pid(1) }));
    assert!(acts.contains(&Action::KillJobGroup { pgid: job_pid(2) }));
    assert_eq!(killed(&acts).len(), 3, "{acts:?}");
    // One worker reports its job's death first; the other dies with it.
    let acts = s.feed(Input::JobEnded {
        child: w,
        job: 1,
        end: Some(SIGKILL),
        ran_for: None,
        start_error: None,
        reason: None,
        exited_first: false,
    });
    assert!(
        releases(&acts).is_empty() && outcomes(&acts).is_empty(),
        "{acts:?}"
    );
    s.reap(s.grabber(), SIGKILL);
    s.reap(w, SIGKILL);
    let acts = s.reap(w2, SIGKILL);
    assert!(
        releases(&acts).is_empty() && outcomes(&acts).is_empty(),
        "{acts:?}"
    );
    assert!(events(&acts).contains(&Event::SupervisorStopped { code: 1 }));
    assert_eq!(exit_code(&acts), Some(1));
    // A SIGTERM after it changes nothing.
    assert!(exit_code(&s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    }))
    .is_none());
}

#[test]
fn a_job_reported_dead_after_a_second_interrupt_is_requeued_not_failed() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::Shutdown {
        reason: "SIGINT".into(),
        immediate: false,
    });
    s.feed(Input::Shutdown {
        reason: "SIGINT".into(),
        immediate: true,
    });
    // The worker outlives its job by a moment and reports the SIGKILL it saw.
    let acts = s.feed(Input::JobEnded {
        child: w,
        job: 1,
        end: Some(SIGKILL),
        ran_for: None,
        start_error: None,
        reason: None,
        exited_first: false,
    });
    assert_eq!(releases(&acts), [(1, 1)]);
    assert!(!acts
        .iter()
        .any(|a| matches!(a, Action::RecordOutcome { .. })));
}

#[test]
fn a_child_spawned_after_an_immediate_stop_is_killed_as_soon_as_its_pid_is_known() {
    let mut s = Story::new(spec(vec![group("a", 1)]));
    let start = s.feed(Input::Start);
    // The stop comes before the shell reported any pid.
    let acts = s.feed(Input::Shutdown {
        reason: "SIGINT".into(),
        immediate: true,
    });
    assert!(killed(&acts).is_empty());
    let acts = s.spawn_all(&start);
    let mut k = killed(&acts);
    k.sort_by_key(|k| k.0);
    assert_eq!(
        k,
        [(s.grabber(), Signal::Kill), (s.w("a", 0), Signal::Kill)]
    );
}

#[test]
fn a_child_asked_to_stop_before_its_pid_was_known_is_still_killed_in_time() {
    let mut s = Story::new(spec(vec![group("a", 1)]));
    let start = s.feed(Input::Start);
    let acts = s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    assert_eq!(stopped(&acts).len(), 2);
    // The stop deadline passes without pids: nothing to kill yet, and no busy loop.
    assert!(s.at(6.0).iter().all(|a| matches!(a, Action::Ping { .. })));
    // Pids arrive late: both are overdue and get killed at once.
    let acts = s.spawn_all(&start);
    assert_eq!(killed(&acts).len(), 2);
}

#[test]
fn a_child_killed_by_the_heartbeat_while_stopping_leaves_no_timer_behind() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    s.silent.insert(s.w("a", 0));
    // Not killed at t=20 (20 s after it was last heard, but its first ping unanswered
    // was at t=5).
    assert!(killed(&s.at(21.0)).is_empty());
    assert_eq!(
        stopped(&s.feed(Input::Reload(spec(vec![group("a", 0)])))),
        [s.w("a", 0)]
    );
    // Silent since the ping of t=5: killed at the ping round of t=25, before its stop
    // deadline (t=26) ...
    assert_eq!(killed(&s.at(25.0)), [(s.w("a", 0), Signal::Kill)]);
    // ... which then must not stay due (`Story::at` checks the core never spins).
    assert!(killed(&s.at(30.0)).is_empty());
    assert_eq!(s.core.next_deadline(), Some(Time::from_secs_f64(35.0)));
}

#[test]
fn a_job_canceled_during_a_graceful_stop_is_canceled_not_requeued() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    assert_eq!(job_signals(&s.at(30.0)), [(1, Signal::Term)]);
    assert!(job_signals(&s.feed(Input::CancelRequested { job: 1 })).is_empty());
    let acts = s.end(w, 1, Some(ProcessEnd::Signaled(15)));
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Canceled, Next::Done)]);
    assert!(releases(&acts).is_empty());

    // The same when the worker dies under the canceled job.
    let (mut s, _) = Story::boot(spec(vec![group("a", 1)]));
    let (w, _) = s.start(1, "a");
    s.feed(Input::CancelRequested { job: 1 });
    s.feed(Input::Shutdown {
        reason: "SIGTERM".into(),
        immediate: false,
    });
    let acts = s.reap(w, SIGKILL);
    assert_eq!(outcomes(&acts), [(1, 1, Outcome::Canceled, Next::Done)]);
    assert!(releases(&acts).is_empty());
}

// ----- until_empty ---------------------------------------------------------------------

fn until_empty(max_workers: u32) -> supervisor_core::spec::Spec {
    let mut sp = spec(vec![group("a", max_workers)]);
    sp.until_empty = true;
    sp
}

#[test]
fn until_empty_stops_with_code_0_once_the_source_is_empty_and_nothing_runs() {
    let (mut s, boot) = Story::boot(until_empty(1));
    let epoch = poll(&boot).unwrap();
    let acts = s.feed(Input::SourceReport { epoch, empty: true });
    assert!(matches!(
        &events(&acts)[0],
        Event::SupervisorStopping { .. }
    ));
    s.reap(s.grabber(), ProcessEnd::Exited(0));
    let acts = s.reap(s.w("a", 0), ProcessEnd::Exited(0));
    assert_eq!(exit_code(&acts), Some(0));
}

#[test]
fn until_empty_ignores_a_report_older_than_the_last_change() {
    let (mut s, boot) = Story::boot(until_empty(1));
    let first = poll(&boot).unwrap();
    let (w, _) = s.start(1, "a");
    let acts = s.end(w, 1, OK);
    let second = poll(&acts).unwrap();
    assert!(s
        .feed(Input::SourceReport {
            epoch: first,
            empty: true
        })
        .is_empty());
    assert!(!s.core.is_stopping());
    s.feed(Input::SourceReport {
        epoch: second,
        empty: true,
    });
    assert!(s.core.is_stopping());
}

#[test]
fn until_empty_waits_while_a_job_runs() {
    let (mut s, boot) = Story::boot(until_empty(1));
    let epoch = poll(&boot).unwrap();
    let (w, _) = s.start(1, "a");
    s.feed(Input::SourceReport { epoch, empty: true });
    assert!(!s.core.is_stopping());
    let acts = s.end(w, 1, OK);
    assert!(!s.core.is_stopping(), "the report predates the job's end");
    s.feed(Input::SourceReport {
        epoch: poll(&acts).unwrap(),
        empty: true,
    });
    assert!(s.core.is_stopping());
}

#[test]
fn until_empty_does_not_stop_when_a_lost_job_goes_back_to_the_queue() {
    let (mut s, boot) = Story::boot(until_empty(1));
    let epoch = poll(&boot).unwrap();
    let (w, _) = s.start(1, "a");
    // "Empty" while job 1 runs: nothing else is queued.
    s.feed(Input::SourceReport { epoch, empty: true });
    // Its worker dies: job 1 is lost and queued for a retry, so the source is not empty.
    let acts = s.reap(w, SIGKILL);
    assert_eq!(outcomes(&acts)[0].2, Outcome::Lost);
    assert!(!s.core.is_stopping());
}

#[test]
fn until_empty_does_not_stop_when_a_late_claim_goes_back_to_the_queue() {
    let mut sp = spec(vec![group("a", 1), group("b", 1)]);
    sp.until_empty = true;
    let (mut s, _) = Story::boot(sp);
    // Group b is removed while the grabber's claim of job 1 for it is on the way.
    let mut sp = spec(vec![group("a", 1)]);
    sp.until_empty = true;
    let acts = s.feed(Input::Reload(sp));
    let epoch = poll(&acts).unwrap();
    let acts = s.feed(Input::JobClaimed(claim(1, "b", 0)));
    assert_eq!(releases(&acts), [(1, 1)]);
    // The grabber's report was made before job 1 was back in the queue.
    s.feed(Input::SourceReport { epoch, empty: true });
    assert!(!s.core.is_stopping());
}

// ----- timers and the child table ---------------------------------------------------------

#[test]
fn an_idle_cores_only_deadline_is_the_next_ping_round() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    assert_eq!(s.core.next_deadline(), Some(Time::from_secs_f64(5.0)));
    s.at(5.0);
    assert_eq!(s.core.next_deadline(), Some(Time::from_secs_f64(10.0)));
}

#[test]
fn the_child_table_shows_restarts_jobs_and_slots_waiting_for_a_restart() {
    let (mut s, _) = Story::boot(spec(vec![group("a", 2)]));
    s.start(4, "a");
    s.reap(s.w("a", 1), SIGKILL);
    let rows = s.core.children();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0],
        ChildView {
            role: Role::Grabber,
            pid: Some(100),
            state: StateKind::Ready,
            restarts: 0,
            job_id: None
        }
    );
    assert_eq!(
        rows[1],
        ChildView {
            role: worker("a", 0),
            pid: Some(101),
            state: StateKind::Busy,
            restarts: 0,
            job_id: Some(4)
        }
    );
    assert_eq!(
        rows[2],
        ChildView {
            role: worker("a", 1),
            pid: None,
            state: StateKind::Exited,
            restarts: 1,
            job_id: None
        }
    );
}
