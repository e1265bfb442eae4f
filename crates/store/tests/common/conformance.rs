//! The behaviour every `JobStore` must have, as functions over a store [`Factory`]; the
//! [`conformance_tests!`] macro makes one `#[test]` of each for a given kind of store.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use supervisor_store::{
    AfterAttempt, CancelResult, JobFilter, JobState, NewJob, OutcomeKind, OutcomeRecord, Settled,
    StoreError,
};

pub fn outcome(kind: OutcomeKind) -> OutcomeRecord {
    OutcomeRecord {
        kind,
        exit_code: match kind {
            OutcomeKind::Succeeded => Some(0),
            OutcomeKind::Failed => Some(1),
            _ => None,
        },
        signal: match kind {
            OutcomeKind::TimedOut | OutcomeKind::Canceled => Some(9),
            _ => None,
        },
        start_error: None,
        reason: None,
    }
}

pub fn submit_and_get_round_trip(new: Factory) {
    let mut s = new();
    let new = NewJob {
        command: vec!["sh".into(), "-c".into(), "echo $X".into()],
        group: Some("g".into()),
        tags: [("arch".to_string(), "x86_64".to_string())].into(),
        env: [("X".to_string(), "1".to_string())].into(),
        cwd: Some("/tmp".into()),
        timeout_s: Some(2.5),
        max_attempts: Some(4),
        key: Some("k1".into()),
        priority: 7,
        not_before: Some(150.0),
        after: vec![],
    };
    let ids = s.submit(&[new.clone(), job("true")], 100.0).unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] > 0 && ids[1] > ids[0]);
    let got = s.get(ids[0], 100.0).unwrap().unwrap();
    assert_eq!(got.id, ids[0]);
    assert_eq!(got.state, JobState::Queued);
    assert_eq!((got.priority, got.not_before), (7, Some(150.0)));
    assert_eq!(got.group.as_deref(), Some("g"));
    assert_eq!(got.command, new.command);
    assert_eq!(got.tags, new.tags);
    assert_eq!(got.env, new.env);
    assert_eq!(got.cwd.as_deref(), Some("/tmp"));
    assert_eq!(got.timeout_s, Some(2.5));
    assert_eq!(got.max_attempts, Some(4));
    assert_eq!(got.key.as_deref(), Some("k1"));
    assert_eq!(got.attempts, 0);
    assert_eq!(got.created_at, 100.0);
    assert_eq!(
        (got.started_at, got.finished_at, got.not_before, got.owner),
        (None, None, Some(150.0), None)
    );
    assert_eq!(
        (got.exit_code, got.signal, got.last_outcome.as_deref()),
        (None, None, None)
    );
    assert!(!got.cancel_requested);
    assert!(!got.is_finished());

    let plain = s.get(ids[1], 100.0).unwrap().unwrap();
    assert_eq!(plain.group, None);
    assert!(plain.tags.is_empty() && plain.env.is_empty());
    assert_eq!(s.get(9999, 100.0).unwrap(), None);

    let json = serde_json::to_value(&got).unwrap();
    assert_eq!(json["state"], "queued");
    assert_eq!(json["id"], ids[0]);
}

pub fn a_bad_job_queues_nothing(new: Factory) {
    let mut s = new();
    let bad = NewJob {
        timeout_s: Some(-1.0),
        ..job("x")
    };
    let err = s.submit(&[job("a"), bad, job("b")], 1.0).unwrap_err();
    match &err {
        StoreError::InvalidJob { index, message } => {
            assert_eq!(*index, 1);
            assert!(message.starts_with("timeout_s"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("job 1"), "{err}");
    assert!(s.list(None, 1.0).unwrap().is_empty());
    assert_eq!(s.submit(&[], 1.0).unwrap(), Vec::<i64>::new());
}

pub fn idempotent_keys(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [named("g")];
    let keyed = |k: &str| NewJob {
        key: Some(k.into()),
        ..job_in("g")
    };

    // Queued, and within one batch.
    let ids = s
        .submit(&[keyed("a"), keyed("a"), keyed("b")], 1.0)
        .unwrap();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
    assert_eq!(s.submit(&[keyed("a")], 2.0).unwrap(), vec![ids[0]]);

    // Running.
    let claimed = s
        .claim(me, &routes, &mut credits(&[("g", 1)]), 3.0)
        .unwrap();
    assert_eq!(claimed.jobs[0].id, ids[0]);
    assert_eq!(s.submit(&[keyed("a")], 4.0).unwrap(), vec![ids[0]]);

    // Awaiting a retry.
    let failed = outcome(OutcomeKind::Failed);
    assert!(s
        .record_outcome(
            ids[0],
            1,
            me,
            &failed,
            AfterAttempt::Retry { at: 50.0 },
            5.0
        )
        .unwrap());
    assert_eq!(s.submit(&[keyed("a")], 6.0).unwrap(), vec![ids[0]]);

    // Finished: a new job.
    let c = s
        .claim(me, &routes, &mut credits(&[("g", 5)]), 60.0)
        .unwrap();
    let attempt = c.jobs.iter().find(|j| j.id == ids[0]).unwrap().attempt;
    assert_eq!(attempt, 2);
    let ok = outcome(OutcomeKind::Succeeded);
    assert!(s
        .record_outcome(ids[0], 2, me, &ok, AfterAttempt::Done, 61.0)
        .unwrap());
    let again = s.submit(&[keyed("a")], 62.0).unwrap();
    assert_ne!(again[0], ids[0]);
    assert_eq!(s.submit(&[keyed("a")], 63.0).unwrap(), again);

    // A failed job with no retry is finished too.
    let id_b = ids[2];
    assert!(s
        .record_outcome(id_b, 1, me, &failed, AfterAttempt::Done, 64.0)
        .unwrap());
    assert_ne!(s.submit(&[keyed("b")], 65.0).unwrap(), vec![id_b]);
}

pub fn routing_by_group_and_tags(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [
        named("only-named"),
        matching("x86", &[("arch", &["x86_64", "i386"])]),
        matching("fast", &[("arch", &["x86_64"]), ("speed", &["fast"])]),
        matching("linux", &[("os", &["linux"])]),
    ];
    let ids = s
        .submit(
            &[
                job_in("only-named"),                             // 0 -> only-named
                job_in("nowhere"),                                // 1 -> stays queued
                tagged(&[("arch", "i386")]),                      // 2 -> x86
                tagged(&[("arch", "x86_64"), ("speed", "fast")]), // 3 -> x86 (first match)
                tagged(&[("os", "linux"), ("arch", "arm")]),      // 4 -> linux
                tagged(&[("speed", "fast")]),                     // 5 -> nowhere (missing key)
                job("untargeted"),                                // 6 -> nowhere
                job_in("x86"),                                    // 7 -> x86 (named)
            ],
            1.0,
        )
        .unwrap();
    let mut cr = credits(&[("only-named", 9), ("x86", 9), ("fast", 9), ("linux", 9)]);
    let res = s.claim(me, &routes, &mut cr, 2.0).unwrap();
    let got: Vec<(i64, &str)> = res.jobs.iter().map(|c| (c.id, c.group.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (ids[0], "only-named"),
            (ids[2], "x86"),
            (ids[3], "x86"),
            (ids[4], "linux"),
            (ids[7], "x86"),
        ]
    );
    assert_eq!(cr["x86"], 6);
    assert_eq!(cr["fast"], 9);
    // What is left is taken by no route: nothing to wait for.
    assert!(res.more.is_empty(), "{:?}", res.more);
    for i in [1, 5, 6] {
        assert_eq!(s.get(ids[i], 3.0).unwrap().unwrap().state, JobState::Queued);
    }
    // Claimed jobs show their routed group.
    assert_eq!(
        s.get(ids[3], 3.0).unwrap().unwrap().group.as_deref(),
        Some("x86")
    );

    // A job's group is decided once: new routes alone change nothing for tagged jobs
    // (a job naming a group goes to it as soon as some route has that name)...
    let routes = [matching("catch-all", &[]), named("nowhere")];
    let res = s
        .claim(
            me,
            &routes,
            &mut credits(&[("catch-all", 9), ("nowhere", 0)]),
            3.5,
        )
        .unwrap();
    assert!(res.jobs.is_empty(), "{:?}", res.jobs);
    // ...until a reload reroutes the queue, in one pass.
    assert_eq!(s.reroute(&routes).unwrap(), 2);
    assert_eq!(s.reroute(&routes).unwrap(), 0, "nothing changes twice");
    let res = s
        .claim(
            me,
            &routes,
            &mut credits(&[("catch-all", 9), ("nowhere", 9)]),
            4.0,
        )
        .unwrap();
    let got: Vec<(i64, &str)> = res.jobs.iter().map(|c| (c.id, c.group.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (ids[1], "nowhere"),
            (ids[5], "catch-all"),
            (ids[6], "catch-all")
        ]
    );
}

/// A job queued again (its attempt failed or was lost, it was given back or taken back
/// from a dead supervisor, or retried by hand) is routed again by the next claim: the
/// routes may have changed while it ran, and a reroute passes over running jobs.
pub fn a_job_queued_again_is_routed_again(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let old = [matching("h", &[])];
    let new_routes = [matching("g", &[])];
    let ids = s
        .submit(
            &[
                tagged(&[("arch", "x")]),
                tagged(&[("arch", "y")]),
                tagged(&[("arch", "z")]),
            ],
            1.0,
        )
        .unwrap();
    let got = s
        .claim(me, &old, &mut credits(&[("h", 3)]), 2.0)
        .unwrap()
        .jobs;
    assert_eq!(got.len(), 3);
    // A reload replaces group h by g while the three run.
    assert_eq!(
        s.reroute(&new_routes).unwrap(),
        0,
        "running jobs are not rerouted"
    );
    let failed = outcome(OutcomeKind::Failed);
    assert!(s
        .record_outcome(ids[0], 1, me, &failed, AfterAttempt::Retry { at: 3.0 }, 3.0)
        .unwrap());
    assert!(s
        .record_outcome(
            ids[1],
            1,
            me,
            &outcome(OutcomeKind::Lost),
            AfterAttempt::Retry { at: 3.0 },
            3.0
        )
        .unwrap());
    assert!(s.release(ids[2], 1, me, 3.0).unwrap());
    let res = s
        .claim(me, &new_routes, &mut credits(&[("g", 9)]), 4.0)
        .unwrap();
    let got: Vec<(i64, &str)> = res.jobs.iter().map(|c| (c.id, c.group.as_str())).collect();
    assert_eq!(got, [(ids[0], "g"), (ids[1], "g"), (ids[2], "g")]);
    // Retried by hand after it ended, and after another change of routes.
    assert!(s
        .record_outcome(ids[0], 2, me, &failed, AfterAttempt::Dead, 5.0)
        .unwrap());
    assert!(s.retry(ids[0], 5.0).unwrap());
    let last = [matching("f", &[])];
    let res = s.claim(me, &last, &mut credits(&[("f", 9)]), 6.0).unwrap();
    let got: Vec<(i64, &str)> = res.jobs.iter().map(|c| (c.id, c.group.as_str())).collect();
    assert_eq!(got, [(ids[0], "f")]);
}

/// A reroute in steps (as a grabber does it, a step a pass) covers every live job once,
/// in id order, skipping finished and running ones.
pub fn a_reroute_in_steps_covers_the_queue_once(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let jobs: Vec<NewJob> = (0..12).map(|_| tagged(&[("arch", "x")])).collect();
    let ids = s.submit(&jobs, 1.0).unwrap();
    let old = [matching("h", &[])];
    // Three of them run, one of which then succeeds.
    s.claim(me, &old, &mut credits(&[("h", 3)]), 2.0).unwrap();
    assert!(s
        .record_outcome(
            ids[0],
            1,
            me,
            &outcome(OutcomeKind::Succeeded),
            AfterAttempt::Done,
            3.0
        )
        .unwrap());
    let new_routes = [matching("g", &[])];
    let (mut after, mut steps, mut changed) = (0, 0, 0);
    loop {
        let step = s.reroute_from(&new_routes, after, 4).unwrap();
        steps += 1;
        changed += step.changed;
        match step.next {
            Some(next) => {
                assert!(next > after, "steps move on");
                after = next;
            }
            None => break,
        }
    }
    // The 9 queued jobs, 4 at a time: 3 steps (the last one short).
    assert_eq!((changed, steps), (9, 3));
    assert_eq!(s.reroute(&new_routes).unwrap(), 0, "nothing left to change");
    let res = s
        .claim(me, &new_routes, &mut credits(&[("g", 20)]), 4.0)
        .unwrap();
    let got: Vec<i64> = res.jobs.iter().map(|j| j.id).collect();
    assert_eq!(got, ids[3..]);
}

pub fn claim_respects_credits_and_id_order(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [matching("a", &[("k", &["a"])]), matching("b", &[])];
    let mut jobs = Vec::new();
    for i in 0..10 {
        jobs.push(if i % 2 == 0 {
            tagged(&[("k", "a")])
        } else {
            job("b")
        });
    }
    let ids = s.submit(&jobs, 1.0).unwrap();

    // No credit: nothing claimed, but work is runnable.
    let mut cr = credits(&[("a", 0), ("b", 0)]);
    let res = s.claim(me, &routes, &mut cr, 2.0).unwrap();
    assert!(res.jobs.is_empty());
    assert!(res.more.runnable);

    let mut cr = credits(&[("a", 3), ("b", 1)]);
    let res = s.claim(me, &routes, &mut cr, 2.0).unwrap();
    let got: Vec<i64> = res.jobs.iter().map(|c| c.id).collect();
    assert_eq!(got, vec![ids[0], ids[1], ids[2], ids[4]]);
    assert_eq!(cr, credits(&[("a", 0), ("b", 0)]));
    assert!(res.more.runnable);
    assert_eq!(res.more.waiting_until, None);
    assert!(res.jobs.iter().all(|c| c.attempt == 1));

    // Credits for one group only take that group's jobs.
    let mut cr = credits(&[("a", 0), ("b", 100)]);
    let res = s.claim(me, &routes, &mut cr, 3.0).unwrap();
    let got: Vec<i64> = res.jobs.iter().map(|c| c.id).collect();
    assert_eq!(got, vec![ids[3], ids[5], ids[7], ids[9]]);
    assert_eq!(cr["b"], 96);
    assert!(res.more.runnable, "group a still has queued jobs");

    let mut cr = credits(&[("a", 100), ("b", 100)]);
    let res = s.claim(me, &routes, &mut cr, 4.0).unwrap();
    assert_eq!(res.jobs.len(), 2);
    assert!(res.more.is_empty());
    let counts = s.counts(4.0).unwrap();
    assert_eq!(counts[&JobState::Running], 10);
    assert_eq!(counts[&JobState::Queued], 0);
}

pub fn claimed_job_carries_what_the_worker_needs(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let new = NewJob {
        env: [("A".to_string(), "b".to_string())].into(),
        cwd: Some("/".into()),
        timeout_s: Some(3.0),
        max_attempts: Some(2),
        ..NewJob::new(["echo", "x"])
    };
    let id = s.submit(&[new], 1.0).unwrap()[0];
    let res = s
        .claim(me, &[matching("g", &[])], &mut credits(&[("g", 1)]), 5.0)
        .unwrap();
    let c = &res.jobs[0];
    assert_eq!(c.id, id);
    assert_eq!(c.group, "g");
    assert_eq!(c.command, vec!["echo", "x"]);
    assert_eq!(c.env["A"], "b");
    assert_eq!(c.cwd.as_deref(), Some("/"));
    assert_eq!(c.timeout_s, Some(3.0));
    assert_eq!(c.max_attempts, Some(2));
    assert_eq!(c.attempt, 1);
    let j = s.get(id, 5.0).unwrap().unwrap();
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.owner, Some(me));
    assert_eq!(j.started_at, Some(5.0));
    assert_eq!(j.attempts, 1);
}

pub fn retry_waits_in_failed_then_queues(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [named("g")];
    let id = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    s.claim(me, &routes, &mut credits(&[("g", 1)]), 100.0)
        .unwrap();
    assert!(s
        .record_outcome(
            id,
            1,
            me,
            &outcome(OutcomeKind::Failed),
            AfterAttempt::Retry { at: 110.0 },
            101.0
        )
        .unwrap());

    let j = s.get(id, 105.0).unwrap().unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.not_before, Some(110.0));
    assert_eq!(j.exit_code, Some(1));
    assert_eq!(j.last_outcome.as_deref(), Some("failed"));
    assert_eq!(j.finished_at, Some(101.0));
    assert_eq!(j.owner, None);
    assert!(!j.is_finished());

    let res = s
        .claim(me, &routes, &mut credits(&[("g", 1)]), 105.0)
        .unwrap();
    assert!(res.jobs.is_empty());
    assert!(!res.more.runnable);
    assert_eq!(res.more.waiting_until, Some(110.0));
    assert_eq!(s.list(Some(JobState::Failed), 105.0).unwrap().len(), 1);

    // Once due, it is queued (get, list and counts see it so).
    assert_eq!(s.get(id, 110.0).unwrap().unwrap().state, JobState::Queued);
    assert_eq!(s.counts(110.0).unwrap()[&JobState::Queued], 1);
    let res = s
        .claim(me, &routes, &mut credits(&[("g", 1)]), 110.0)
        .unwrap();
    assert_eq!(res.jobs.len(), 1);
    assert_eq!(res.jobs[0].attempt, 2);
    let j = s.get(id, 110.0).unwrap().unwrap();
    assert_eq!(j.state, JobState::Running);
    assert_eq!(
        (j.exit_code, j.finished_at, j.not_before),
        (None, None, None)
    );
    assert_eq!(j.last_outcome.as_deref(), Some("failed"));

    // A timed-out attempt retried the same way, read directly by claim.
    assert!(s
        .record_outcome(
            id,
            2,
            me,
            &outcome(OutcomeKind::TimedOut),
            AfterAttempt::Retry { at: 120.0 },
            111.0
        )
        .unwrap());
    assert_eq!(s.get(id, 115.0).unwrap().unwrap().state, JobState::TimedOut);
    let res = s
        .claim(me, &routes, &mut credits(&[("g", 1)]), 120.5)
        .unwrap();
    assert_eq!(res.jobs[0].attempt, 3);
}

pub fn dead_and_done_outcomes(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [matching("g", &[])];
    let ids = s
        .submit(&[job("a"), job("b"), job("c"), job("d")], 1.0)
        .unwrap();
    s.claim(me, &routes, &mut credits(&[("g", 4)]), 2.0)
        .unwrap();
    let rec = |s: &mut TestStore, id, kind, next| {
        assert!(s
            .record_outcome(id, 1, me, &outcome(kind), next, 3.0)
            .unwrap())
    };
    rec(&mut s, ids[0], OutcomeKind::Failed, AfterAttempt::Dead);
    rec(&mut s, ids[1], OutcomeKind::Lost, AfterAttempt::Done);
    // Success and cancellation end the job whatever `next` says.
    rec(
        &mut s,
        ids[2],
        OutcomeKind::Succeeded,
        AfterAttempt::Retry { at: 9.0 },
    );
    rec(
        &mut s,
        ids[3],
        OutcomeKind::Canceled,
        AfterAttempt::Retry { at: 9.0 },
    );
    let states: Vec<JobState> = s.list(None, 4.0).unwrap().iter().map(|j| j.state).collect();
    assert_eq!(
        states,
        vec![
            JobState::Dead,
            JobState::Dead,
            JobState::Succeeded,
            JobState::Canceled
        ]
    );
    assert!(s.list(None, 4.0).unwrap().iter().all(|j| j.is_finished()));
    let res = s
        .claim(me, &routes, &mut credits(&[("g", 4)]), 10.0)
        .unwrap();
    assert!(res.jobs.is_empty() && res.more.is_empty());

    let err = s
        .record_outcome(
            ids[0],
            1,
            me,
            &outcome(OutcomeKind::Failed),
            AfterAttempt::Retry { at: f64::NAN },
            5.0,
        )
        .unwrap_err();
    assert!(err.to_string().contains("retry time"), "{err}");
}

pub fn lost_attempt_is_queued_with_not_before(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [named("g")];
    let id = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    s.claim(me, &routes, &mut credits(&[("g", 1)]), 2.0)
        .unwrap();
    assert!(s
        .record_outcome(
            id,
            1,
            me,
            &outcome(OutcomeKind::Lost),
            AfterAttempt::Retry { at: 20.0 },
            3.0
        )
        .unwrap());
    let j = s.get(id, 3.0).unwrap().unwrap();
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.not_before, Some(20.0));
    assert_eq!(j.last_outcome.as_deref(), Some("lost"));
    assert_eq!(j.attempts, 1);

    let res = s
        .claim(me, &routes, &mut credits(&[("g", 1)]), 19.9)
        .unwrap();
    assert!(res.jobs.is_empty());
    assert_eq!(res.more.waiting_until, Some(20.0));
    assert!(!res.more.runnable);
    let res = s
        .claim(me, &routes, &mut credits(&[("g", 1)]), 20.0)
        .unwrap();
    assert_eq!(res.jobs[0].attempt, 2);
}

pub fn release_gives_the_attempt_back(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [named("g")];
    let id = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    s.claim(me, &routes, &mut credits(&[("g", 1)]), 2.0)
        .unwrap();
    assert!(!s.release(id, 2, me, 3.0).unwrap(), "wrong attempt");
    assert!(!s.release(id, 1, me + 1, 3.0).unwrap(), "wrong owner");
    assert!(s.release(id, 1, me, 3.0).unwrap());
    assert!(!s.release(id, 1, me, 3.0).unwrap(), "not running any more");
    let j = s.get(id, 3.0).unwrap().unwrap();
    assert_eq!((j.state, j.attempts, j.owner), (JobState::Queued, 0, None));
    assert_eq!(j.finished_at, None);
    let res = s
        .claim(me, &routes, &mut credits(&[("g", 1)]), 4.0)
        .unwrap();
    assert_eq!(res.jobs[0].attempt, 1);
}

pub fn stale_outcomes_are_refused(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let other = instance(&mut *s, 2);
    let routes = [named("g")];
    let id = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    s.claim(me, &routes, &mut credits(&[("g", 1)]), 2.0)
        .unwrap();
    let ok = outcome(OutcomeKind::Succeeded);
    assert!(!s
        .record_outcome(id, 2, me, &ok, AfterAttempt::Done, 3.0)
        .unwrap());
    assert!(!s
        .record_outcome(id, 0, me, &ok, AfterAttempt::Done, 3.0)
        .unwrap());
    assert!(!s
        .record_outcome(id, 1, other, &ok, AfterAttempt::Done, 3.0)
        .unwrap());
    assert!(!s
        .record_outcome(id + 1, 1, me, &ok, AfterAttempt::Done, 3.0)
        .unwrap());
    assert_eq!(s.get(id, 3.0).unwrap().unwrap().state, JobState::Running);
    assert!(s
        .record_outcome(id, 1, me, &ok, AfterAttempt::Done, 3.0)
        .unwrap());
    // Reported twice: the second is stale.
    assert!(!s
        .record_outcome(id, 1, me, &ok, AfterAttempt::Done, 3.0)
        .unwrap());
    let j = s.get(id, 4.0).unwrap().unwrap();
    assert_eq!(j.state, JobState::Succeeded);
    assert_eq!(j.exit_code, Some(0));
    assert!(j.is_finished());
}

/// Outcomes stored with the next claim (`settle_and_claim`) or alone (`settle`): each as
/// `record_outcome` would, a stale one refused, and the retry an outcome makes due at once
/// claimable by the same call.
pub fn outcomes_settled_with_a_claim(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [named("g")];
    let ids = s
        .submit(&[job_in("g"), job_in("g"), job_in("g")], 1.0)
        .unwrap();
    let got = s
        .claim(me, &routes, &mut credits(&[("g", 2)]), 2.0)
        .unwrap()
        .jobs;
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..2]);
    let settle = |job, attempt, kind, next, at| supervisor_store::Settle {
        job,
        attempt,
        owner: me,
        outcome: outcome(kind),
        next,
        at,
    };
    let outcomes = [
        settle(ids[0], 1, OutcomeKind::Succeeded, AfterAttempt::Done, 3.0),
        // A failure retried at once: claimable by the claim of the same call.
        settle(
            ids[1],
            1,
            OutcomeKind::Failed,
            AfterAttempt::Retry { at: 3.0 },
            3.0,
        ),
        // A job not running (queued, not claimed yet): stale.
        settle(ids[2], 1, OutcomeKind::Succeeded, AfterAttempt::Done, 3.0),
    ];
    let mut cr = credits(&[("g", 2)]);
    let (stored, claimed) = s
        .settle_and_claim(&outcomes, me, &routes, &mut cr, 3.0)
        .unwrap();
    assert_eq!(stored, [Settled::Stored, Settled::Stored, Settled::Stale]);
    let j = s.get(ids[0], 3.0).unwrap().unwrap();
    assert_eq!(
        (j.state, j.exit_code, j.finished_at),
        (JobState::Succeeded, Some(0), Some(3.0))
    );
    let mut got: Vec<(i64, u32)> = claimed.jobs.iter().map(|j| (j.id, j.attempt)).collect();
    got.sort_unstable();
    assert_eq!(got, [(ids[1], 2), (ids[2], 1)]);
    // Settled again: stale, changing nothing.
    assert_eq!(s.settle(&outcomes[..1]).unwrap(), [Settled::Stale]);
    // Alone, with no claim.
    let done = [
        settle(ids[1], 2, OutcomeKind::Failed, AfterAttempt::Dead, 4.0),
        settle(ids[2], 1, OutcomeKind::Succeeded, AfterAttempt::Done, 4.0),
    ];
    assert_eq!(s.settle(&done).unwrap(), [Settled::Stored, Settled::Stored]);
    assert_eq!(s.get(ids[1], 5.0).unwrap().unwrap().state, JobState::Dead);
    assert_eq!(
        s.get(ids[2], 5.0).unwrap().unwrap().state,
        JobState::Succeeded
    );
    assert_eq!(s.settle(&[]).unwrap(), Vec::<Settled>::new());
    // A retry asked for a job whose cancel was requested while it ran: canceled, and
    // the answer says so (its events must not announce a retry).
    let id = s.submit(&[job_in("g")], 6.0).unwrap()[0];
    s.claim(me, &routes, &mut credits(&[("g", 1)]), 6.0)
        .unwrap();
    assert_eq!(s.cancel(id, 6.5).unwrap(), CancelResult::Requested);
    let failed = settle(
        id,
        1,
        OutcomeKind::Failed,
        AfterAttempt::Retry { at: 7.0 },
        7.0,
    );
    assert_eq!(s.settle(&[failed]).unwrap(), [Settled::Canceled]);
    let j = s.get(id, 8.0).unwrap().unwrap();
    assert_eq!(
        (j.state, j.last_outcome.as_deref(), j.exit_code),
        (JobState::Canceled, Some("canceled"), Some(1))
    );
    // Its own cancel outcome is simply stored.
    let id = s.submit(&[job_in("g")], 9.0).unwrap()[0];
    s.claim(me, &routes, &mut credits(&[("g", 1)]), 9.0)
        .unwrap();
    assert_eq!(s.cancel(id, 9.5).unwrap(), CancelResult::Requested);
    let canceled = settle(id, 1, OutcomeKind::Canceled, AfterAttempt::Done, 10.0);
    assert_eq!(s.settle(&[canceled]).unwrap(), [Settled::Stored]);
}

pub fn cancel_in_every_state(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [named("g")];
    let ids = s
        .submit(
            &[
                job_in("g"),
                job_in("g"),
                job_in("g"),
                job_in("g"),
                job_in("g"),
            ],
            1.0,
        )
        .unwrap();
    // Queued.
    assert_eq!(s.cancel(ids[0], 2.0).unwrap(), CancelResult::Canceled);
    let j = s.get(ids[0], 2.0).unwrap().unwrap();
    assert_eq!((j.state, j.finished_at), (JobState::Canceled, Some(2.0)));
    assert_eq!(
        s.cancel(ids[0], 2.0).unwrap(),
        CancelResult::AlreadyFinished(JobState::Canceled)
    );
    assert_eq!(s.cancel(9999, 2.0).unwrap(), CancelResult::Unknown);

    let res = s
        .claim(me, &routes, &mut credits(&[("g", 4)]), 3.0)
        .unwrap();
    assert_eq!(res.jobs.len(), 4);
    assert!(s.cancel_requests(me).unwrap().is_empty());

    // Running: requested; the owner stops it and reports `canceled`.
    assert_eq!(s.cancel(ids[1], 4.0).unwrap(), CancelResult::Requested);
    assert_eq!(s.cancel(ids[1], 4.0).unwrap(), CancelResult::Requested);
    assert_eq!(s.cancel(ids[2], 4.0).unwrap(), CancelResult::Requested);
    assert_eq!(
        s.cancel_requests(me).unwrap(),
        vec![(ids[1], 1), (ids[2], 1)]
    );
    assert!(s.get(ids[1], 4.0).unwrap().unwrap().cancel_requested);
    assert!(s
        .record_outcome(
            ids[1],
            1,
            me,
            &outcome(OutcomeKind::Canceled),
            AfterAttempt::Done,
            5.0
        )
        .unwrap());
    assert_eq!(
        s.get(ids[1], 5.0).unwrap().unwrap().state,
        JobState::Canceled
    );
    // A failure racing the cancel is not retried.
    assert!(s
        .record_outcome(
            ids[2],
            1,
            me,
            &outcome(OutcomeKind::Failed),
            AfterAttempt::Retry { at: 6.0 },
            5.0
        )
        .unwrap());
    assert_eq!(
        s.get(ids[2], 7.0).unwrap().unwrap().state,
        JobState::Canceled
    );
    assert!(s.cancel_requests(me).unwrap().is_empty());

    // Finished.
    assert!(s
        .record_outcome(
            ids[3],
            1,
            me,
            &outcome(OutcomeKind::Succeeded),
            AfterAttempt::Done,
            5.0
        )
        .unwrap());
    assert_eq!(
        s.cancel(ids[3], 6.0).unwrap(),
        CancelResult::AlreadyFinished(JobState::Succeeded)
    );

    // Awaiting a retry: canceled at once.
    assert!(s
        .record_outcome(
            ids[4],
            1,
            me,
            &outcome(OutcomeKind::Failed),
            AfterAttempt::Retry { at: 50.0 },
            5.0
        )
        .unwrap());
    assert_eq!(s.cancel(ids[4], 6.0).unwrap(), CancelResult::Canceled);
    let j = s.get(ids[4], 60.0).unwrap().unwrap();
    assert_eq!((j.state, j.not_before), (JobState::Canceled, None));
}

pub fn release_of_a_cancel_requested_job_cancels_it(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let id = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    s.claim(me, &[named("g")], &mut credits(&[("g", 1)]), 2.0)
        .unwrap();
    assert_eq!(s.cancel(id, 3.0).unwrap(), CancelResult::Requested);
    assert!(s.release(id, 1, me, 3.5).unwrap());
    let j = s.get(id, 4.0).unwrap().unwrap();
    assert_eq!((j.state, j.finished_at), (JobState::Canceled, Some(3.5)));
}

/// Every way of taking a running job back: a cancel-requested job ends `canceled`,
/// finished at the `now` given (not left unset, nor at its earlier attempt's end); a plain
/// job is `queued` with its attempt given back and no end time.
pub fn taking_back_a_cancel_requested_job_cancels_it_at_now(new: Factory) {
    #[derive(Debug, Clone, Copy)]
    enum Path {
        Release,
        ReleaseStrays,
        UnregisterInstance,
        RequeueOrphans,
    }
    let mut s = new();
    let me = instance(&mut *s, 1);
    let paths = [
        Path::Release,
        Path::ReleaseStrays,
        Path::UnregisterInstance,
        Path::RequeueOrphans,
    ];
    for (n, path) in paths.into_iter().enumerate() {
        let base = 100.0 * (n + 1) as f64;
        let group = format!("g{n}");
        let routes = [named(&group)];
        let owner = instance(&mut *s, 10 + n as u32);
        let ids = s.submit(&[job_in(&group), job_in(&group)], base).unwrap();
        let (plain, doomed) = (ids[0], ids[1]);

        // A first attempt that ended (so `finished_at` was set once), then a second one
        // under way.
        let res = s
            .claim(
                owner,
                &routes,
                &mut credits(&[(group.as_str(), 2)]),
                base + 1.0,
            )
            .unwrap();
        assert_eq!(res.jobs.len(), 2, "{path:?}");
        for id in ids.iter().copied() {
            let lost = outcome(OutcomeKind::Lost);
            let retry = AfterAttempt::Retry { at: base + 3.0 };
            assert!(s
                .record_outcome(id, 1, owner, &lost, retry, base + 2.0)
                .unwrap());
            assert_eq!(
                s.get(id, base + 2.0).unwrap().unwrap().finished_at,
                Some(base + 2.0)
            );
        }
        let res = s
            .claim(
                owner,
                &routes,
                &mut credits(&[(group.as_str(), 2)]),
                base + 3.0,
            )
            .unwrap();
        let attempts: Vec<(i64, u32)> = res.jobs.iter().map(|c| (c.id, c.attempt)).collect();
        assert_eq!(attempts, vec![(plain, 2), (doomed, 2)], "{path:?}");
        assert_eq!(
            s.cancel(doomed, base + 4.0).unwrap(),
            CancelResult::Requested
        );

        let now = base + 5.5;
        let back = match path {
            Path::Release => {
                assert!(s.release(plain, 2, owner, now).unwrap());
                assert!(s.release(doomed, 2, owner, now).unwrap());
                ids.clone()
            }
            Path::ReleaseStrays => s.release_strays(owner, &[], None, now).unwrap(),
            Path::UnregisterInstance => s.unregister_instance(owner, now).unwrap(),
            Path::RequeueOrphans => s.requeue_orphans(me, &|i| i.id == owner, now).unwrap(),
        };
        assert_eq!(back, ids, "{path:?}");

        let j = s.get(doomed, now + 10.0).unwrap().unwrap();
        assert_eq!(
            (j.state, j.finished_at, j.attempts, j.owner),
            (JobState::Canceled, Some(now), 2, None),
            "{path:?}"
        );
        assert_eq!(j.last_outcome.as_deref(), Some("canceled"), "{path:?}");
        assert_eq!(j.not_before, None, "{path:?}");
        assert!(j.is_finished(), "{path:?}");

        let j = s.get(plain, now + 10.0).unwrap().unwrap();
        assert_eq!(
            (j.state, j.attempts, j.owner, j.finished_at, j.not_before),
            (JobState::Queued, 1, None, None, None),
            "{path:?}"
        );
        assert!(!j.is_finished(), "{path:?}");

        // The plain job runs again as attempt 2; the canceled one never does.
        let res = s
            .claim(
                me,
                &routes,
                &mut credits(&[(group.as_str(), 2)]),
                now + 10.0,
            )
            .unwrap();
        let attempts: Vec<(i64, u32)> = res.jobs.iter().map(|c| (c.id, c.attempt)).collect();
        assert_eq!(attempts, vec![(plain, 2)], "{path:?}");
        assert!(s.release(plain, 2, me, now + 11.0).unwrap());
    }
}

pub fn requeue_orphans_touches_only_dead_instances(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let dead = instance(&mut *s, 2);
    let alive = instance(&mut *s, 3);
    let routes = [named("g")];
    let ids = s
        .submit(
            &[
                job_in("g"),
                job_in("g"),
                job_in("g"),
                job_in("g"),
                job_in("g"),
            ],
            1.0,
        )
        .unwrap();
    s.claim(me, &routes, &mut credits(&[("g", 1)]), 2.0)
        .unwrap();
    s.claim(dead, &routes, &mut credits(&[("g", 2)]), 2.0)
        .unwrap();
    s.claim(alive, &routes, &mut credits(&[("g", 1)]), 2.0)
        .unwrap();
    assert_eq!(s.cancel(ids[2], 3.0).unwrap(), CancelResult::Requested);

    // `me` is never asked about, even if the predicate would say dead.
    let asked = std::cell::RefCell::new(Vec::new());
    let back = s
        .requeue_orphans(
            me,
            &|i| {
                asked.borrow_mut().push(i.id);
                i.id != alive
            },
            3.5,
        )
        .unwrap();
    assert_eq!(asked.into_inner(), vec![dead, alive]);
    assert_eq!(back, vec![ids[1], ids[2]]);

    let j = s.get(ids[1], 4.0).unwrap().unwrap();
    assert_eq!((j.state, j.attempts, j.owner), (JobState::Queued, 0, None));
    let j = s.get(ids[2], 4.0).unwrap().unwrap();
    assert_eq!((j.state, j.finished_at), (JobState::Canceled, Some(3.5)));
    let j = s.get(ids[0], 4.0).unwrap().unwrap();
    assert_eq!((j.state, j.owner), (JobState::Running, Some(me)));
    let j = s.get(ids[3], 4.0).unwrap().unwrap();
    assert_eq!((j.state, j.owner), (JobState::Running, Some(alive)));
    assert_eq!(s.get(ids[4], 4.0).unwrap().unwrap().state, JobState::Queued);

    let left: Vec<i64> = s.instances().unwrap().iter().map(|i| i.id).collect();
    assert_eq!(left, vec![me, alive]);
    let inst = &s.instances().unwrap()[1];
    assert_eq!(
        (inst.host.as_str(), inst.pid, inst.token.as_str()),
        ("host", 3, "token-3")
    );

    // Nothing dead: nothing happens.
    assert!(s.requeue_orphans(me, &|_| false, 4.0).unwrap().is_empty());

    // A stopping instance gives its jobs back.
    assert_eq!(s.unregister_instance(alive, 4.5).unwrap(), vec![ids[3]]);
    assert_eq!(s.get(ids[3], 5.0).unwrap().unwrap().state, JobState::Queued);
    assert_eq!(s.instances().unwrap().len(), 1);
}

pub fn counts_include_every_state(new: Factory) {
    let mut s = new();
    let counts = s.counts(1.0).unwrap();
    assert_eq!(counts.len(), JobState::ALL.len());
    assert!(counts.values().all(|n| *n == 0));
    s.submit(&[job("a"), job("b")], 1.0).unwrap();
    let counts = s.counts(1.0).unwrap();
    assert_eq!(counts[&JobState::Queued], 2);
    assert_eq!(counts[&JobState::TimedOut], 0);
    let json = serde_json::to_value(&counts).unwrap();
    assert_eq!(json["queued"], 2);
    assert_eq!(json["timed_out"], 0);
}

pub fn list_filters_by_state_in_id_order(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let ids = s
        .submit(&[job_in("g"), job("x"), job_in("g")], 1.0)
        .unwrap();
    s.claim(me, &[named("g")], &mut credits(&[("g", 1)]), 2.0)
        .unwrap();
    let all: Vec<i64> = s.list(None, 3.0).unwrap().iter().map(|j| j.id).collect();
    assert_eq!(all, ids);
    let queued: Vec<i64> = s
        .list(Some(JobState::Queued), 3.0)
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(queued, vec![ids[1], ids[2]]);
    assert_eq!(s.list(Some(JobState::Running), 3.0).unwrap()[0].id, ids[0]);
    assert!(s.list(Some(JobState::Dead), 3.0).unwrap().is_empty());
}

pub fn a_page_of_the_newest_jobs_and_counts_by_group(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let ids = s
        .submit(
            &[job_in("g"), job("x"), job_in("g"), job_in("h"), job_in("g")],
            1.0,
        )
        .unwrap();
    s.claim(
        me,
        &[named("g"), named("h")],
        &mut credits(&[("g", 1)]),
        2.0,
    )
    .unwrap();
    let page = |s: &mut dyn JobStore, f: JobFilter| -> Vec<i64> {
        s.list_newest(&f, 3.0)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect()
    };
    let all = |limit| JobFilter {
        limit,
        ..JobFilter::default()
    };
    assert_eq!(page(&mut *s, all(100)), ids, "every job, in id order");
    assert_eq!(page(&mut *s, all(2)), ids[3..].to_vec(), "the newest two");
    assert!(page(&mut *s, all(0)).is_empty());
    let queued_g = JobFilter {
        state: Some(JobState::Queued),
        group: Some("g".into()),
        ..all(10)
    };
    assert_eq!(page(&mut *s, queued_g), vec![ids[2], ids[4]]);
    let running = JobFilter {
        state: Some(JobState::Running),
        ..all(10)
    };
    assert_eq!(page(&mut *s, running), vec![ids[0]]);
    let failed = JobFilter {
        outcome: Some("failed".into()),
        ..all(10)
    };
    assert!(page(&mut *s, failed).is_empty());

    let mut counts = s.counts_by_group(3.0).unwrap();
    counts.sort_by(|a, b| (a.state, &a.group).cmp(&(b.state, &b.group)));
    let seen: Vec<(JobState, Option<&str>, u64)> = counts
        .iter()
        .map(|c| (c.state, c.group.as_deref(), c.jobs))
        .collect();
    assert_eq!(
        seen,
        vec![
            (JobState::Queued, None, 1),
            (JobState::Queued, Some("g"), 2),
            (JobState::Queued, Some("h"), 1),
            (JobState::Running, Some("g"), 1),
        ]
    );
}

pub fn many_unroutable_jobs_do_not_hide_routable_ones(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [named("g"), matching("t", &[("k", &["v"])])];
    let unroutable: Vec<NewJob> = (0..2_000).map(|_| job("x")).collect();
    s.submit(&unroutable, 1.0).unwrap();
    let routable: Vec<NewJob> = (0..1_000)
        .flat_map(|_| [job_in("g"), tagged(&[("k", "v")])])
        .collect();
    let ids = s.submit(&routable, 1.0).unwrap();
    let started = std::time::Instant::now();
    let mut claimed = Vec::new();
    loop {
        let mut cr = credits(&[("g", 3), ("t", 2)]);
        let res = s.claim(me, &routes, &mut cr, 2.0).unwrap();
        claimed.extend(res.jobs.iter().map(|c| c.id));
        if res.jobs.is_empty() {
            assert!(res.more.is_empty());
            break;
        }
    }
    eprintln!(
        "claimed {} jobs behind 2,000 unroutable ones in {:?}",
        claimed.len(),
        started.elapsed()
    );
    claimed.sort_unstable();
    assert_eq!(claimed, ids);
}

pub fn two_thousand_cycles(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [matching("g", &[])];
    let started = std::time::Instant::now();
    for i in 0..2_000 {
        let now = f64::from(i);
        let id = s.submit(&[job("true")], now).unwrap()[0];
        let res = s
            .claim(me, &routes, &mut credits(&[("g", 1)]), now)
            .unwrap();
        assert_eq!(res.jobs.len(), 1);
        assert_eq!(res.jobs[0].id, id);
        assert!(s
            .record_outcome(
                id,
                1,
                me,
                &outcome(OutcomeKind::Succeeded),
                AfterAttempt::Done,
                now
            )
            .unwrap());
    }
    eprintln!(
        "2,000 submit+claim+record cycles in {:?}",
        started.elapsed()
    );
    assert_eq!(s.counts(3000.0).unwrap()[&JobState::Succeeded], 2_000);
}

pub fn ten_thousand_queued_claimed_a_few_at_a_time(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [matching("g", &[])];
    let jobs: Vec<NewJob> = (0..10_000).map(|_| job("true")).collect();
    s.submit(&jobs, 1.0).unwrap();
    let started = std::time::Instant::now();
    let mut n = 0;
    let mut last = 0;
    loop {
        let res = s
            .claim(me, &routes, &mut credits(&[("g", 4)]), 2.0)
            .unwrap();
        if res.jobs.is_empty() {
            break;
        }
        for c in &res.jobs {
            assert!(c.id > last);
            last = c.id;
            assert!(s
                .record_outcome(
                    c.id,
                    1,
                    me,
                    &outcome(OutcomeKind::Succeeded),
                    AfterAttempt::Done,
                    3.0
                )
                .unwrap());
        }
        n += res.jobs.len();
    }
    eprintln!("10,000 jobs claimed 4 at a time in {:?}", started.elapsed());
    assert_eq!(n, 10_000);
    let _: BTreeMap<JobState, u64> = s.counts(4.0).unwrap();
}

pub fn release_strays_gives_back_only_unknown_claims_of_that_owner(new: Factory) {
    let mut store = new();
    let me = store.register_instance("h", 1, "t", 0.0).unwrap();
    let other = store.register_instance("h", 2, "u", 0.0).unwrap();
    let jobs: Vec<NewJob> = (0..4).map(|_| job_in("g")).collect();
    let ids = store.submit(&jobs, 0.0).unwrap();
    let routes = [named("g")];
    store
        .claim(me, &routes, &mut credits(&[("g", 3)]), 1.0)
        .unwrap();
    store
        .claim(other, &routes, &mut credits(&[("g", 1)]), 1.0)
        .unwrap();
    assert_eq!(store.cancel(ids[2], 1.5).unwrap(), CancelResult::Requested);
    let released = store.release_strays(me, &[ids[0]], None, 1.75).unwrap();
    assert_eq!(released, vec![ids[1], ids[2]]);
    let j = store.get(ids[1], 2.0).unwrap().unwrap();
    assert_eq!((j.state, j.attempts, j.owner), (JobState::Queued, 0, None));
    // A stray whose cancel was requested is canceled rather than queued.
    let j = store.get(ids[2], 2.0).unwrap().unwrap();
    assert_eq!(
        (j.state, j.attempts, j.owner),
        (JobState::Canceled, 1, None)
    );
    assert_eq!(j.last_outcome.as_deref(), Some("canceled"));
    assert_eq!(j.finished_at, Some(1.75));
    assert_eq!(
        store.get(ids[0], 2.0).unwrap().unwrap().state,
        JobState::Running
    );
    assert_eq!(
        store.get(ids[3], 2.0).unwrap().unwrap().state,
        JobState::Running
    );
    assert!(store
        .release_strays(me, &[ids[0]], None, 2.0)
        .unwrap()
        .is_empty());
    assert_eq!(
        store.release_strays(other, &[], None, 2.0).unwrap(),
        vec![ids[3]]
    );
}

pub fn instances_are_touched(new: Factory) {
    let mut s = new();
    let a = s.register_instance("h1", 10, "t10", 5.0).unwrap();
    let b = s.register_instance("h2", 20, "t20", 6.0).unwrap();
    assert!(b > a);
    let all = s.instances().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (
            all[0].id,
            all[0].host.as_str(),
            all[0].pid,
            all[0].token.as_str()
        ),
        (a, "h1", 10, "t10")
    );
    assert_eq!((all[0].started_at, all[0].last_seen), (5.0, 5.0));
    assert!(s.touch_instance(a, 42.5).unwrap());
    let all = s.instances().unwrap();
    assert_eq!((all[0].started_at, all[0].last_seen), (5.0, 42.5));
    assert_eq!((all[1].started_at, all[1].last_seen), (6.0, 6.0));

    // Another host's instance not seen for long is taken for dead.
    let timeout = 30.0;
    let now = 50.0;
    let back = s
        .requeue_orphans(a, &|i| now - i.last_seen > timeout, now)
        .unwrap();
    assert!(back.is_empty());
    assert_eq!(s.instances().unwrap().len(), 1);
    // A forgotten instance learns it when it touches.
    assert!(!s.touch_instance(b, 51.0).unwrap());
    assert!(s.touch_instance(a, 51.0).unwrap());
}

pub fn requeue_orphans_spares_an_instance_touched_meanwhile(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let slow = instance(&mut *s, 2);
    let id = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    s.claim(slow, &[named("g")], &mut credits(&[("g", 1)]), 2.0)
        .unwrap();
    // It says it is alive (on another handle) after it was judged dead.
    let other = std::cell::RefCell::new(s.reopen());
    let back = s
        .requeue_orphans(
            me,
            &|i| {
                assert!(other.borrow_mut().touch_instance(i.id, 100.0).unwrap());
                true
            },
            3.0,
        )
        .unwrap();
    assert!(back.is_empty());
    let j = s.get(id, 3.0).unwrap().unwrap();
    assert_eq!((j.state, j.owner), (JobState::Running, Some(slow)));
    assert_eq!(s.instances().unwrap().len(), 2);
    // Judged on its latest state, it is dead.
    assert_eq!(s.requeue_orphans(me, &|_| true, 3.0).unwrap(), vec![id]);
}

pub fn a_group_without_credit_keeps_the_jobs_it_matches_first(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [matching("arm", &[("arch", &["arm"])]), matching("any", &[])];
    let ids = s
        .submit(
            &[
                tagged(&[("arch", "arm")]),
                tagged(&[("arch", "x86")]),
                tagged(&[("arch", "arm")]),
                job("plain"),
            ],
            1.0,
        )
        .unwrap();
    let res = s
        .claim(me, &routes, &mut credits(&[("arm", 0), ("any", 10)]), 2.0)
        .unwrap();
    let got: Vec<(i64, &str)> = res.jobs.iter().map(|c| (c.id, c.group.as_str())).collect();
    assert_eq!(got, vec![(ids[1], "any"), (ids[3], "any")]);
    assert!(res.more.runnable, "the arm jobs wait for credit");
    // A group absent from the credits runs nothing (no workers, or it gave up): the
    // jobs it matches first stay queued, and do not count as runnable.
    let res = s
        .claim(me, &routes, &mut credits(&[("any", 10)]), 2.0)
        .unwrap();
    assert!(res.jobs.is_empty());
    assert!(!res.more.runnable, "nothing can run the arm jobs");
    assert!(res.more.is_empty());
    let res = s
        .claim(me, &routes, &mut credits(&[("arm", 1), ("any", 10)]), 2.0)
        .unwrap();
    let got: Vec<(i64, &str)> = res.jobs.iter().map(|c| (c.id, c.group.as_str())).collect();
    assert_eq!(got, vec![(ids[0], "arm")]);
    assert!(res.more.runnable);
}

pub fn batch_ids_follow_the_batch_order(new: Factory) {
    let mut s = new();
    let keyed = |k: &str| NewJob {
        key: Some(k.into()),
        ..job(k)
    };
    let batch = [
        job("1"),
        keyed("a"),
        job("2"),
        job("3"),
        keyed("a"),
        keyed("b"),
        job("4"),
    ];
    let ids = s.submit(&batch, 1.0).unwrap();
    assert_eq!(ids[1], ids[4]);
    let distinct: Vec<i64> = [0, 1, 2, 3, 5, 6].iter().map(|i| ids[*i]).collect();
    assert!(distinct.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let jobs = s.list(None, 1.0).unwrap();
    let commands: Vec<&str> = jobs.iter().map(|j| j.command[0].as_str()).collect();
    assert_eq!(commands, vec!["1", "a", "2", "3", "b", "4"]);
    // A batch of keys already queued queues nothing new.
    assert_eq!(
        s.submit(&[keyed("b"), keyed("a")], 2.0).unwrap(),
        vec![ids[5], ids[1]]
    );
    assert_eq!(s.list(None, 2.0).unwrap().len(), 6);
}

pub fn odd_strings_round_trip(new: Factory) {
    let mut s = new();
    let odd = [
        "",
        "with space",
        "quote ' and \" and \\",
        "ünïcødé ✓ 🚀",
        "$1 ? %s {}",
        "line\nbreak\ttab",
    ];
    let new_job = NewJob {
        command: std::iter::once("prog".to_string())
            .chain(odd.iter().map(|s| s.to_string()))
            .collect(),
        group: Some("grüppe 'x'".into()),
        tags: odd
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("k{i} ✓"), v.to_string()))
            .collect(),
        env: odd
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("V{i}"), v.to_string()))
            .collect(),
        cwd: Some("/tmp/dir with 'quotes'".into()),
        key: Some("ключ".into()),
        ..NewJob::default()
    };
    let id = s.submit(std::slice::from_ref(&new_job), 1.0).unwrap()[0];
    let j = s.get(id, 1.0).unwrap().unwrap();
    assert_eq!(j.command, new_job.command);
    assert_eq!(j.tags, new_job.tags);
    assert_eq!(j.env, new_job.env);
    assert_eq!(j.cwd, new_job.cwd);
    assert_eq!(j.key, new_job.key);
    assert_eq!(j.group, new_job.group);
    // Routing matches odd tag values exactly.
    let me = instance(&mut *s, 1);
    let routes = [matching("t", &[("k3 ✓", &["ünïcødé ✓ 🚀"])])];
    let tagged_id = s
        .submit(
            &[
                tagged(&[("k3 ✓", "ünïcødé ✓ 🚀")]),
                tagged(&[("k3 ✓", "ünïcødé")]),
            ],
            2.0,
        )
        .unwrap()[0];
    let res = s
        .claim(me, &routes, &mut credits(&[("t", 5)]), 3.0)
        .unwrap();
    let got: Vec<i64> = res.jobs.iter().map(|c| c.id).collect();
    assert_eq!(got, vec![tagged_id]);
    let c = &res.jobs[0];
    assert_eq!(c.group, "t");
}

pub fn extreme_numbers_round_trip(new: Factory) {
    let mut s = new();
    let me = s.register_instance("h", u32::MAX, "t", 1.0).unwrap();
    assert_eq!(s.instances().unwrap()[0].pid, u32::MAX);
    let id = s
        .submit(
            &[NewJob {
                max_attempts: Some(supervisor_core::bounds::MAX_ATTEMPTS),
                timeout_s: Some(1e-9),
                ..job_in("g")
            }],
            1.25,
        )
        .unwrap()[0];
    let res = s
        .claim(me, &[named("g")], &mut credits(&[("g", 1)]), 1e12)
        .unwrap();
    assert_eq!(
        res.jobs[0].max_attempts,
        Some(supervisor_core::bounds::MAX_ATTEMPTS)
    );
    assert_eq!(res.jobs[0].timeout_s, Some(1e-9));
    let outcome = OutcomeRecord {
        kind: OutcomeKind::Failed,
        exit_code: Some(i32::MIN),
        signal: Some(i32::MAX),
        start_error: None,
        reason: Some("killed for its memory limit".into()),
    };
    assert!(s
        .record_outcome(id, 1, me, &outcome, AfterAttempt::Done, 1e12 + 0.5)
        .unwrap());
    let j = s.get(id, 1e13).unwrap().unwrap();
    assert_eq!((j.exit_code, j.signal), (Some(i32::MIN), Some(i32::MAX)));
    // Why the attempt ended as it did, as its worker said, is the job's reason.
    assert_eq!(j.reason.as_deref(), Some("killed for its memory limit"));
    assert_eq!((j.created_at, j.finished_at), (1.25, Some(1e12 + 0.5)));
}

/// `threads` handles claim `total` jobs at once, each with its own connection; no job
/// is claimed twice and every job is claimed.
pub fn handles_claiming_at_once_never_double_claim(new: Factory, threads: u32, total: usize) {
    let mut s = new();
    let jobs: Vec<NewJob> = (0..total)
        .map(|i| if i % 3 == 0 { job_in("n") } else { job("true") })
        .collect();
    let ids: BTreeSet<i64> = s.submit(&jobs, 1.0).unwrap().into_iter().collect();
    let open = s.opener();
    let started = std::time::Instant::now();
    let results: Vec<Vec<i64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let open = open.clone();
                scope.spawn(move || {
                    let mut s = open();
                    let me = instance(&mut *s, 100 + t);
                    let routes = [named("n"), matching("g", &[])];
                    let mut mine = Vec::new();
                    loop {
                        let n = 1 + (mine.len() as u32 % 3);
                        let res = s
                            .claim(me, &routes, &mut credits(&[("g", n), ("n", 1)]), 2.0)
                            .unwrap();
                        if res.jobs.is_empty() {
                            if res.more.is_empty() {
                                break;
                            }
                            // Jobs another handle holds locked mid-claim: look again.
                            continue;
                        }
                        for c in res.jobs {
                            let ok = OutcomeRecord {
                                kind: OutcomeKind::Succeeded,
                                exit_code: Some(0),
                                signal: None,
                                start_error: None,
                                reason: None,
                            };
                            assert!(s
                                .record_outcome(c.id, c.attempt, me, &ok, AfterAttempt::Done, 3.0)
                                .unwrap());
                            mine.push(c.id);
                        }
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = BTreeSet::new();
    for id in results.iter().flatten() {
        assert!(seen.insert(*id), "job {id} claimed twice");
    }
    assert_eq!(seen, ids);
    eprintln!(
        "{total} jobs claimed by {threads} handles in {:?}: {:?} each",
        started.elapsed(),
        results.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let counts = s.counts(4.0).unwrap();
    assert_eq!(counts[&JobState::Succeeded], total as u64);
}

pub fn two_handles_claiming_at_once_never_double_claim(new: Factory) {
    handles_claiming_at_once_never_double_claim(new, 2, 2_000);
}

/// A job taken back from a dead supervisor for the third time ends dead with the
/// quarantine reason; a graceful release does not count.
pub fn a_job_whose_supervisor_dies_three_times_is_quarantined(new: Factory) {
    let mut s = new();
    let routes = [named("g")];
    let id = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    let mut now = 2.0;
    // A graceful stop gives it back: not a death.
    let me = instance(&mut *s, 1);
    let claimed = s
        .claim(me, &routes, &mut credits(&[("g", 1)]), now)
        .unwrap();
    assert!(s.release(id, claimed.jobs[0].attempt, me, now).unwrap());
    let mut last = me;
    for death in 1..=supervisor_store::SUPERVISOR_DEATHS {
        now += 1.0;
        let res = s
            .claim(last, &routes, &mut credits(&[("g", 1)]), now)
            .unwrap();
        assert_eq!(res.jobs.len(), 1, "death {death}");
        let next = instance(&mut *s, 100 + death);
        let back = s.requeue_orphans(next, &|i| i.id == last, now).unwrap();
        assert_eq!(back, [id]);
        let j = s.get(id, now).unwrap().unwrap();
        if death < supervisor_store::SUPERVISOR_DEATHS {
            assert_eq!(j.state, JobState::Queued, "death {death}");
            assert_eq!(j.reason, None);
        } else {
            assert_eq!(j.state, JobState::Dead);
            assert_eq!(
                j.reason.as_deref(),
                Some(supervisor_store::quarantine_reason().as_str())
            );
            assert_eq!(j.finished_at, Some(now));
            assert_eq!(j.last_outcome.as_deref(), Some("lost"));
            assert_eq!(j.attempts, 1, "the attempts given back are not counted");
        }
        last = next;
    }
    // Nothing left to claim.
    let res = s
        .claim(last, &routes, &mut credits(&[("g", 1)]), now)
        .unwrap();
    assert!(res.jobs.is_empty() && res.more.is_empty());
}

/// Retention: finished jobs go by age and by count, oldest first, in batches; live ones
/// (queued, running, waiting for a retry) never.
pub fn purge_deletes_finished_jobs_by_age_and_count_never_live_ones(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let routes = [named("g")];
    // Ten jobs finished at 10, 11, ... 19; then a running one, a queued one, and one
    // waiting for its retry.
    let ids = s.submit(&vec![job_in("g"); 13], 1.0).unwrap();
    for (i, &id) in ids.iter().take(10).enumerate() {
        let now = 10.0 + i as f64;
        let c = s
            .claim(me, &routes, &mut credits(&[("g", 1)]), now)
            .unwrap();
        assert_eq!(c.jobs[0].id, id);
        let next = if i % 2 == 0 {
            AfterAttempt::Done
        } else {
            AfterAttempt::Dead
        };
        let kind = if i % 2 == 0 {
            OutcomeKind::Succeeded
        } else {
            OutcomeKind::Failed
        };
        assert!(s
            .record_outcome(id, 1, me, &outcome(kind), next, now)
            .unwrap());
    }
    let c = s
        .claim(me, &routes, &mut credits(&[("g", 2)]), 30.0)
        .unwrap();
    assert_eq!(c.jobs.len(), 2);
    let retry = c.jobs[1].id;
    let retry_at = AfterAttempt::Retry { at: 1e9 };
    assert!(s
        .record_outcome(retry, 1, me, &outcome(OutcomeKind::Failed), retry_at, 31.0)
        .unwrap());
    // By age, in batches of 2: those finished before 14.
    assert_eq!(s.purge_finished(Some(14.0), None, 2).unwrap(), &ids[0..2]);
    assert_eq!(s.purge_finished(Some(14.0), None, 2).unwrap(), &ids[2..4]);
    assert_eq!(
        s.purge_finished(Some(14.0), None, 2).unwrap(),
        Vec::<i64>::new()
    );
    // By count: the newest 3 finished jobs stay.
    assert_eq!(s.purge_finished(None, Some(3), 100).unwrap(), &ids[4..7]);
    assert_eq!(
        s.purge_finished(None, Some(3), 100).unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(
        s.purge_finished(Some(1e12), Some(0), 100).unwrap(),
        &ids[7..10]
    );
    // What is left is live.
    let left: Vec<i64> = s.list(None, 40.0).unwrap().iter().map(|j| j.id).collect();
    assert_eq!(left, &ids[10..13]);
}

/// Higher priority first, then id order, within each group; a job delayed to a time to
/// come waits for it.
pub fn priority_first_then_id_order(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let mut high = job_in("g");
    high.priority = 5;
    let mut low = job_in("g");
    low.priority = -1;
    let mut later = job_in("g");
    later.priority = 9;
    later.not_before = Some(100.0);
    let ids = s
        .submit(
            &[job_in("g"), low, high.clone(), later, job_in("g"), high],
            1.0,
        )
        .unwrap();
    assert_eq!(s.get(ids[2], 1.0).unwrap().unwrap().priority, 5);
    let mut order = Vec::new();
    for _ in 0..ids.len() {
        let mut cr = credits(&[("g", 1)]);
        let res = s.claim(me, &[named("g")], &mut cr, 2.0).unwrap();
        order.extend(res.jobs.iter().map(|c| c.id));
    }
    assert_eq!(order, [ids[2], ids[5], ids[0], ids[4], ids[1]]);
    let mut cr = credits(&[("g", 1)]);
    let res = s.claim(me, &[named("g")], &mut cr, 100.0).unwrap();
    assert_eq!(res.jobs.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[3]]);
    let mut bad = job_in("g");
    bad.priority = i64::MAX;
    assert!(s.submit(&[bad], 1.0).is_err());
}

/// A paused group claims nothing and reports no backlog until resumed; pausing twice,
/// or resuming what is not paused, changes nothing.
pub fn paused_groups_claim_nothing_until_resumed(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let ids = s.submit(&[job_in("a"), job_in("b")], 1.0).unwrap();
    s.pause(&["a".into(), "a".into()], 2.0).unwrap();
    s.pause(&["a".into()], 3.0).unwrap();
    assert_eq!(s.paused().unwrap(), ["a"]);
    let routes = [named("a"), named("b")];
    let mut cr = credits(&[("a", 1), ("b", 1)]);
    let res = s.claim(me, &routes, &mut cr, 4.0).unwrap();
    assert_eq!(res.jobs.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[1]]);
    let mut cr = credits(&[("a", 1)]);
    let res = s.claim(me, &routes, &mut cr, 4.0).unwrap();
    assert!(res.jobs.is_empty() && !res.more.runnable, "{res:?}");
    s.resume(Some(&["b".into()])).unwrap();
    assert_eq!(s.paused().unwrap(), ["a"]);
    s.resume(None).unwrap();
    assert!(s.paused().unwrap().is_empty());
    let mut cr = credits(&[("a", 1)]);
    let res = s.claim(me, &routes, &mut cr, 5.0).unwrap();
    assert_eq!(res.jobs.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[0]]);
}

/// A job runs only after all its dependencies succeeded; one that ends otherwise cancels
/// it (and what runs after it, on down), with the reason naming it. A dependency that does
/// not exist is refused at submit; one already ended otherwise cancels the job at once.
pub fn jobs_run_after_their_dependencies_succeed_or_are_canceled(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let after = |deps: &[i64]| {
        let mut j = job_in("g");
        j.after = deps.to_vec();
        j
    };
    let a = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    let d = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    let b = s.submit(&[after(&[a])], 1.0).unwrap()[0];
    let c = s.submit(&[after(&[a, d])], 1.0).unwrap()[0];
    let e = s.submit(&[after(&[c])], 1.0).unwrap()[0];
    assert_eq!(s.get(c, 1.0).unwrap().unwrap().after, [a, d]);
    let claim_all = |s: &mut dyn JobStore, at: f64| -> Vec<i64> {
        let mut cr = credits(&[("g", 10)]);
        let res = s.claim(me, &[named("g")], &mut cr, at).unwrap();
        res.jobs.iter().map(|c| c.id).collect()
    };
    assert_eq!(claim_all(&mut *s, 2.0), [a, d], "the others wait");
    let ok = outcome(OutcomeKind::Succeeded);
    let failed = outcome(OutcomeKind::Failed);
    assert!(s
        .record_outcome(a, 1, me, &ok, AfterAttempt::Done, 3.0)
        .unwrap());
    assert_eq!(claim_all(&mut *s, 4.0), [b], "b waited on a alone");
    assert!(s
        .record_outcome(d, 1, me, &failed, AfterAttempt::Dead, 5.0)
        .unwrap());
    let jc = s.get(c, 6.0).unwrap().unwrap();
    assert_eq!(jc.state, JobState::Canceled);
    assert_eq!(
        jc.reason.as_deref(),
        Some(&*format!("dependency {d} ended dead"))
    );
    let je = s.get(e, 6.0).unwrap().unwrap();
    assert_eq!(je.state, JobState::Canceled, "on down");
    assert_eq!(
        je.reason.as_deref(),
        Some(&*format!("dependency {c} ended canceled"))
    );
    assert!(claim_all(&mut *s, 7.0).is_empty());
    // At submit: an unknown dependency, and one already ended otherwise.
    match s.submit(&[job_in("g"), after(&[9999])], 8.0) {
        Err(StoreError::InvalidJob { index: 1, message }) => assert!(message.contains("9999")),
        other => panic!("{other:?}"),
    }
    let late = s.submit(&[after(&[d])], 8.0).unwrap()[0];
    let jl = s.get(late, 8.0).unwrap().unwrap();
    assert_eq!(jl.state, JobState::Canceled);
    assert_eq!(
        jl.reason.as_deref(),
        Some(&*format!("dependency {d} ended dead"))
    );
    // Canceled at submit, it still names its dependency: a retry finds it dead.
    assert!(s.retry(late, 8.5).unwrap());
    let jl = s.get(late, 8.5).unwrap().unwrap();
    assert_eq!(
        (jl.state, jl.reason),
        (
            JobState::Canceled,
            Some(format!("dependency {d} ended dead"))
        )
    );
    // A retry of a job whose dependency ended otherwise queues it, and cancels it again
    // at once: it never runs after a dependency that failed.
    assert!(s.retry(c, 9.0).unwrap());
    let jc = s.get(c, 9.0).unwrap().unwrap();
    assert_eq!(
        (jc.state, jc.reason.as_deref(), jc.finished_at),
        (
            JobState::Canceled,
            Some(&*format!("dependency {d} ended dead")),
            Some(9.0)
        )
    );
    assert!(claim_all(&mut *s, 10.0).is_empty());
    // Once that dependency is retried too, the dependent retried waits for it, and runs
    // when it succeeds.
    assert!(s.retry(d, 11.0).unwrap());
    assert!(s.retry(c, 11.0).unwrap());
    let jc = s.get(c, 11.0).unwrap().unwrap();
    assert_eq!((jc.state, jc.reason), (JobState::Queued, None));
    assert_eq!(claim_all(&mut *s, 12.0), [d], "c waits on d");
    assert!(s
        .record_outcome(d, 1, me, &ok, AfterAttempt::Done, 13.0)
        .unwrap());
    assert_eq!(claim_all(&mut *s, 14.0), [c]);
}

/// A finished job that a job not succeeded names in its `after` is not purged (that one
/// may be retried, and must then find its dependency ended otherwise, not gone); once
/// that one is gone, it is.
pub fn a_dependency_is_kept_while_a_job_not_succeeded_names_it(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let b = s.submit(&[job_in("g")], 1.0).unwrap()[0];
    let mut dependent = job_in("g");
    dependent.after = vec![b];
    let a = s.submit(&[dependent], 1.0).unwrap()[0];
    let mut cr = credits(&[("g", 1)]);
    let got = s.claim(me, &[named("g")], &mut cr, 2.0).unwrap().jobs;
    assert_eq!(got[0].id, b);
    let failed = outcome(OutcomeKind::Failed);
    assert!(s
        .record_outcome(b, 1, me, &failed, AfterAttempt::Dead, 3.0)
        .unwrap());
    assert_eq!(s.get(a, 4.0).unwrap().unwrap().state, JobState::Canceled);
    assert!(s.purge(5.0, Some(JobState::Dead), 100).unwrap().is_empty());
    // Retention too.
    assert_eq!(s.purge_finished(Some(5.0), None, 100).unwrap(), [a]);
    // `a` is gone: `b` may go too.
    assert_eq!(s.purge(5.0, None, 100).unwrap(), [b]);
}

/// Where a queued job stands: its group, how many claimable jobs of that group come
/// first (in the claim's order), and the dependencies it still waits for.
pub fn a_queued_jobs_place_follows_the_claims_order(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let mut urgent = job_in("g");
    urgent.priority = 1;
    let ids = s
        .submit(
            &[
                job_in("g"),
                job_in("g"),
                urgent,
                tagged(&[("arch", "s390x")]),
            ],
            1.0,
        )
        .unwrap();
    let mut dependent = job_in("g");
    dependent.after = vec![ids[0]];
    let dep = s.submit(&[dependent], 1.0).unwrap()[0];
    // Routed at the next claim (none takes the tagged job); nothing claimed (no credit).
    let mut cr = credits(&[("g", 0)]);
    s.claim(me, &[named("g")], &mut cr, 2.0).unwrap();
    let place = |s: &mut dyn JobStore, id| s.place(id, 3.0).unwrap().unwrap();
    assert_eq!(place(&mut *s, ids[2]).ahead, 0, "the higher priority first");
    assert_eq!(place(&mut *s, ids[1]).ahead, 2);
    let p = place(&mut *s, ids[3]);
    assert_eq!((p.route, p.routed), (None, true));
    let p = place(&mut *s, dep);
    assert_eq!(
        (p.route.as_deref(), p.waiting_on),
        (Some("g"), vec![ids[0]])
    );
    let mut cr = credits(&[("g", 1)]);
    let got = s.claim(me, &[named("g")], &mut cr, 4.0).unwrap().jobs;
    assert_eq!(got[0].id, ids[2]);
    assert!(
        s.place(ids[2], 5.0).unwrap().is_none(),
        "running: not queued"
    );
    assert_eq!(place(&mut *s, ids[1]).ahead, 1);
}

/// `retry` queues a job that finished otherwise than `succeeded` with a fresh budget, and
/// nothing else; `purge` deletes finished jobs only, by age and state.
pub fn retry_and_purge_final_jobs(new: Factory) {
    let mut s = new();
    let me = instance(&mut *s, 1);
    let ids = s
        .submit(&[job_in("g"), job_in("g"), job_in("g")], 1.0)
        .unwrap();
    let mut cr = credits(&[("g", 2)]);
    let got = s.claim(me, &[named("g")], &mut cr, 2.0).unwrap().jobs;
    let ok = outcome(OutcomeKind::Succeeded);
    let failed = outcome(OutcomeKind::Failed);
    assert!(s
        .record_outcome(got[0].id, 1, me, &ok, AfterAttempt::Done, 3.0)
        .unwrap());
    assert!(s
        .record_outcome(got[1].id, 1, me, &failed, AfterAttempt::Dead, 4.0)
        .unwrap());
    assert!(!s.retry(ids[0], 5.0).unwrap(), "succeeded: not retried");
    assert!(!s.retry(ids[2], 5.0).unwrap(), "queued: not retried");
    assert!(!s.retry(999, 5.0).unwrap(), "unknown");
    assert!(s.retry(ids[1], 5.0).unwrap());
    let j = s.get(ids[1], 5.0).unwrap().unwrap();
    assert_eq!(
        (j.state, j.attempts, j.started_at, j.finished_at),
        (JobState::Queued, 0, None, None)
    );
    let mut cr = credits(&[("g", 1)]);
    let got = s.claim(me, &[named("g")], &mut cr, 6.0).unwrap().jobs;
    assert_eq!(got[0].attempt, 1, "a fresh budget");
    assert!(s
        .record_outcome(ids[1], 1, me, &failed, AfterAttempt::Dead, 7.0)
        .unwrap());
    // Purge: by age, then by state; live jobs stay.
    assert!(s.purge(3.5, None, 100).unwrap() == [ids[0]]);
    assert!(s
        .purge(1e12, Some(JobState::Succeeded), 100)
        .unwrap()
        .is_empty());
    assert_eq!(s.purge(1e12, Some(JobState::Dead), 100).unwrap(), [ids[1]]);
    assert_eq!(s.get(ids[2], 8.0).unwrap().unwrap().state, JobState::Queued);
    assert!(s.purge(1e12, None, 100).unwrap().is_empty());
}

/// One `#[test]` per conformance test, for the store that `$factory` makes, each with the
/// given attributes (e.g. `#[ignore = "..."]`).
#[allow(unused_macros)]
macro_rules! conformance_tests {
    ($factory:expr $(, #[$attr:meta])*) => {
        $crate::common::conformance::conformance_tests!(
            @each $factory, [$(#[$attr])*],
            submit_and_get_round_trip,
            a_bad_job_queues_nothing,
            idempotent_keys,
            routing_by_group_and_tags,
            a_job_queued_again_is_routed_again,
            a_reroute_in_steps_covers_the_queue_once,
            claim_respects_credits_and_id_order,
            claimed_job_carries_what_the_worker_needs,
            retry_waits_in_failed_then_queues,
            dead_and_done_outcomes,
            lost_attempt_is_queued_with_not_before,
            release_gives_the_attempt_back,
            stale_outcomes_are_refused,
            outcomes_settled_with_a_claim,
            cancel_in_every_state,
            release_of_a_cancel_requested_job_cancels_it,
            taking_back_a_cancel_requested_job_cancels_it_at_now,
            requeue_orphans_touches_only_dead_instances,
            counts_include_every_state,
            list_filters_by_state_in_id_order,
            a_page_of_the_newest_jobs_and_counts_by_group,
            many_unroutable_jobs_do_not_hide_routable_ones,
            two_thousand_cycles,
            ten_thousand_queued_claimed_a_few_at_a_time,
            release_strays_gives_back_only_unknown_claims_of_that_owner,
            instances_are_touched,
            requeue_orphans_spares_an_instance_touched_meanwhile,
            a_group_without_credit_keeps_the_jobs_it_matches_first,
            batch_ids_follow_the_batch_order,
            odd_strings_round_trip,
            extreme_numbers_round_trip,
            priority_first_then_id_order,
            paused_groups_claim_nothing_until_resumed,
            retry_and_purge_final_jobs,
            jobs_run_after_their_dependencies_succeed_or_are_canceled,
            a_dependency_is_kept_while_a_job_not_succeeded_names_it,
            a_queued_jobs_place_follows_the_claims_order,
            two_handles_claiming_at_once_never_double_claim,
            a_job_whose_supervisor_dies_three_times_is_quarantined,
            purge_deletes_finished_jobs_by_age_and_count_never_live_ones
        );
    };
    (@each $factory:expr, $attrs:tt, $($name:ident),*) => {
        $(
            $crate::common::conformance::conformance_tests!(@one $factory, $attrs, $name);
        )*
    };
    (@one $factory:expr, [$(#[$attr:meta])*], $name:ident) => {
        #[test]
        $(#[$attr])*
        fn $name() {
            $crate::common::conformance::$name($factory)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use conformance_tests;
