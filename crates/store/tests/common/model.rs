//! The model test: random operation sequences against a store and a plain in-memory model
//! of the contract's state rules must agree, job by job.
#![allow(dead_code)]

use std::collections::BTreeMap;

use super::*;
use proptest::prelude::*;
use supervisor_store::{
    route, AfterAttempt, CancelResult, JobState, NewJob, OutcomeKind, OutcomeRecord, Route,
};

/// One operation on the store.
#[derive(Debug, Clone)]
pub enum Op {
    Submit {
        target: u8,
        key: Option<u8>,
        count: u8,
    },
    Claim {
        inst: usize,
        c1: u32,
        c2: u32,
    },
    Record {
        pick: usize,
        kind: u8,
        next: u8,
        retry_in: u8,
        stale: u8,
    },
    Release {
        pick: usize,
        stale: bool,
    },
    Cancel {
        pick: usize,
    },
    Advance {
        dt: u8,
    },
    Orphans {
        dead: usize,
    },
}

/// Random operations.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..5, proptest::option::of(0u8..3), 1u8..4)
            .prop_map(|(target, key, count)| Op::Submit { target, key, count }),
        3 => (0usize..2, 0u32..3, 0u32..3).prop_map(|(inst, c1, c2)| Op::Claim { inst, c1, c2 }),
        4 => (any::<usize>(), 0u8..5, 0u8..3, 0u8..10, 0u8..4)
            .prop_map(|(pick, kind, next, retry_in, stale)| Op::Record {
                pick, kind, next, retry_in, stale
            }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, stale)| Op::Release { pick, stale }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        2 => (0u8..15).prop_map(|dt| Op::Advance { dt }),
        1 => (0usize..2).prop_map(|dead| Op::Orphans { dead }),
    ]
}

/// The model's view of one job.
#[derive(Debug, Clone, PartialEq)]
struct M {
    id: i64,
    state: JobState,
    group: Option<String>,
    tags: BTreeMap<String, String>,
    key: Option<String>,
    attempts: u32,
    not_before: Option<f64>,
    owner: Option<i64>,
    cancel_requested: bool,
    /// When the last attempt ended or the job was canceled (unset while one is under way).
    finished_at: Option<f64>,
    /// Attempts ever claimed (never decremented).
    claims: u32,
    /// Supervisors that died while it ran.
    deaths: u32,
}

impl M {
    fn live(&self) -> bool {
        matches!(self.state, JobState::Queued | JobState::Running)
            || (matches!(self.state, JobState::Failed | JobState::TimedOut)
                && self.not_before.is_some())
    }
}

fn routes() -> Vec<Route> {
    vec![
        named("g1"),
        matching("g2", &[("arch", &["a", "b"])]),
        matching("g1", &[("os", &["linux"])]),
    ]
}

fn new_job(target: u8, key: Option<u8>) -> NewJob {
    let mut j = match target {
        0 => job_in("g1"),
        1 => job_in("g2"),
        2 => tagged(&[("arch", "b")]),
        3 => tagged(&[("os", "linux"), ("arch", "z")]),
        _ => job_in("nowhere"),
    };
    j.key = key.map(|k| format!("k{k}"));
    j
}

/// Applies `ops` to a fresh store from `new` and to the model, comparing them after each.
pub fn run(new: Factory, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut s = new();
    let mut insts = [instance(&mut *s, 1), instance(&mut *s, 2)];
    let routes = routes();
    let mut model: Vec<M> = Vec::new();
    let mut now = 10.0;

    // Jobs whose time has come become claimable: due retries are queued again, and a
    // queued job's due `not_before` is cleared.
    let materialise = |model: &mut Vec<M>, now: f64| {
        for m in model.iter_mut() {
            if matches!(
                m.state,
                JobState::Failed | JobState::TimedOut | JobState::Queued
            ) && m.not_before.is_some_and(|t| t <= now)
            {
                m.state = JobState::Queued;
                m.not_before = None;
            }
        }
    };

    for op in ops {
        match op {
            Op::Submit { target, key, count } => {
                let jobs: Vec<NewJob> = (0..count).map(|_| new_job(target, key)).collect();
                let ids = s.submit(&jobs, now).unwrap();
                for (j, id) in jobs.iter().zip(&ids) {
                    let existing = j.key.as_ref().and_then(|k| {
                        model
                            .iter()
                            .find(|m| m.live() && m.key.as_ref() == Some(k))
                            .map(|m| m.id)
                    });
                    match existing {
                        Some(e) => prop_assert_eq!(e, *id),
                        None => {
                            prop_assert!(model.iter().all(|m| m.id < *id));
                            model.push(M {
                                id: *id,
                                state: JobState::Queued,
                                group: j.group.clone(),
                                tags: j.tags.clone(),
                                key: j.key.clone(),
                                attempts: 0,
                                not_before: None,
                                owner: None,
                                cancel_requested: false,
                                finished_at: None,
                                claims: 0,
                                deaths: 0,
                            });
                        }
                    }
                }
            }
            Op::Claim { inst, c1, c2 } => {
                let me = insts[inst];
                let mut cr = credits(&[("g1", c1), ("g2", c2)]);
                let res = s.claim(me, &routes, &mut cr, now).unwrap();
                materialise(&mut model, now);
                let mut mcr = credits(&[("g1", c1), ("g2", c2)]);
                let mut expected = Vec::new();
                for m in model.iter_mut() {
                    if m.state != JobState::Queued || m.not_before.is_some_and(|t| t > now) {
                        continue;
                    }
                    let Some(g) = route(&routes, m.group.as_deref(), &m.tags) else {
                        continue;
                    };
                    let c = mcr.get_mut(g).unwrap();
                    if *c == 0 {
                        continue;
                    }
                    *c -= 1;
                    m.state = JobState::Running;
                    m.attempts += 1;
                    m.claims += 1;
                    m.owner = Some(me);
                    m.not_before = None;
                    m.finished_at = None;
                    expected.push((m.id, g.to_owned(), m.attempts));
                }
                let got: Vec<(i64, String, u32)> = res
                    .jobs
                    .iter()
                    .map(|c| (c.id, c.group.clone(), c.attempt))
                    .collect();
                prop_assert_eq!(got, expected);
                prop_assert_eq!(cr, mcr);
                let routable = |m: &M| route(&routes, m.group.as_deref(), &m.tags).is_some();
                let runnable = model.iter().any(|m| {
                    m.state == JobState::Queued
                        && !matches!(m.not_before, Some(t) if t > now)
                        && routable(m)
                });
                prop_assert_eq!(res.more.runnable, runnable);
                let waiting = model
                    .iter()
                    .filter(|m| routable(m))
                    .filter_map(|m| match m.state {
                        JobState::Queued => m.not_before.filter(|t| *t > now),
                        JobState::Failed | JobState::TimedOut => m.not_before,
                        _ => None,
                    })
                    .min_by(f64::total_cmp);
                prop_assert_eq!(res.more.waiting_until, waiting);
            }
            Op::Record {
                pick,
                kind,
                next,
                retry_in,
                stale,
            } => {
                let running: Vec<usize> = (0..model.len())
                    .filter(|i| model[*i].state == JobState::Running)
                    .collect();
                if running.is_empty() {
                    continue;
                }
                let i = running[pick % running.len()];
                let m = &mut model[i];
                let (attempt, owner) = match stale {
                    1 => (m.attempts + 1, m.owner.unwrap()),
                    2 => (m.attempts, m.owner.unwrap() + 100),
                    _ => (m.attempts, m.owner.unwrap()),
                };
                let kind = [
                    OutcomeKind::Succeeded,
                    OutcomeKind::Failed,
                    OutcomeKind::TimedOut,
                    OutcomeKind::Lost,
                    OutcomeKind::Canceled,
                ][kind as usize];
                let at = now + f64::from(retry_in);
                let next = [
                    AfterAttempt::Done,
                    AfterAttempt::Retry { at },
                    AfterAttempt::Dead,
                ][next as usize];
                let outcome = OutcomeRecord {
                    kind,
                    exit_code: None,
                    signal: None,
                    start_error: None,
                    reason: None,
                };
                let applied = s
                    .record_outcome(m.id, attempt, owner, &outcome, next, now)
                    .unwrap();
                prop_assert_eq!(applied, stale != 1 && stale != 2, "stale report handling");
                if !applied {
                    continue;
                }
                let retry = |state| {
                    if m.cancel_requested {
                        (JobState::Canceled, None)
                    } else {
                        (state, Some(at))
                    }
                };
                let (state, nb) = match (kind, next) {
                    (OutcomeKind::Succeeded, _) => (JobState::Succeeded, None),
                    (OutcomeKind::Canceled, _) => (JobState::Canceled, None),
                    (_, AfterAttempt::Dead) | (OutcomeKind::Lost, AfterAttempt::Done) => {
                        (JobState::Dead, None)
                    }
                    (OutcomeKind::Failed, AfterAttempt::Done) => (JobState::Failed, None),
                    (OutcomeKind::TimedOut, AfterAttempt::Done) => (JobState::TimedOut, None),
                    (OutcomeKind::Failed, AfterAttempt::Retry { .. }) => retry(JobState::Failed),
                    (OutcomeKind::TimedOut, AfterAttempt::Retry { .. }) => {
                        retry(JobState::TimedOut)
                    }
                    (OutcomeKind::Lost, AfterAttempt::Retry { .. }) => retry(JobState::Queued),
                };
                m.state = state;
                m.not_before = nb;
                m.owner = None;
                m.finished_at = Some(now);
            }
            Op::Release { pick, stale } => {
                let running: Vec<usize> = (0..model.len())
                    .filter(|i| model[*i].state == JobState::Running)
                    .collect();
                if running.is_empty() {
                    continue;
                }
                let m = &mut model[running[pick % running.len()]];
                let attempt = if stale { m.attempts + 7 } else { m.attempts };
                let ok = s.release(m.id, attempt, m.owner.unwrap(), now).unwrap();
                prop_assert_eq!(ok, !stale);
                if ok {
                    give_back(m, now);
                }
            }
            Op::Cancel { pick } => {
                let id = if model.is_empty() || pick % 5 == 0 {
                    1_000_000
                } else {
                    model[pick % model.len()].id
                };
                let got = s.cancel(id, now).unwrap();
                let expected = match model.iter_mut().find(|m| m.id == id) {
                    None => CancelResult::Unknown,
                    Some(m) if m.state == JobState::Running => {
                        m.cancel_requested = true;
                        CancelResult::Requested
                    }
                    Some(m) if m.live() => {
                        m.state = JobState::Canceled;
                        m.not_before = None;
                        m.finished_at = Some(now);
                        CancelResult::Canceled
                    }
                    Some(m) => CancelResult::AlreadyFinished(m.state),
                };
                prop_assert_eq!(got, expected);
            }
            Op::Advance { dt } => now += f64::from(dt),
            Op::Orphans { dead } => {
                let me = insts[1 - dead];
                let victim = insts[dead];
                let back = s.requeue_orphans(me, &|i| i.id == victim, now).unwrap();
                let mut expected = Vec::new();
                for m in model.iter_mut().filter(|m| m.owner == Some(victim)) {
                    expected.push(m.id);
                    m.deaths += 1;
                    if m.deaths >= supervisor_store::SUPERVISOR_DEATHS && !m.cancel_requested {
                        // Quarantined: a job its supervisors keep dying under.
                        m.owner = None;
                        m.state = JobState::Dead;
                        m.finished_at = Some(now);
                    } else {
                        give_back(m, now);
                    }
                }
                prop_assert_eq!(back, expected);
                insts[dead] = instance(&mut *s, 50 + dead as u32);
            }
        }

        // The store and the model agree on every job.
        materialise(&mut model, now);
        let jobs = s.list(None, now).unwrap();
        prop_assert_eq!(jobs.len(), model.len());
        for (j, m) in jobs.iter().zip(&model) {
            prop_assert_eq!(j.id, m.id);
            prop_assert_eq!(j.state, m.state, "job {}", j.id);
            prop_assert_eq!(j.attempts, m.attempts, "job {}", j.id);
            prop_assert!(j.attempts <= m.claims);
            prop_assert_eq!(j.owner, m.owner, "job {}", j.id);
            prop_assert_eq!(
                j.not_before.is_some(),
                m.not_before.is_some(),
                "job {}",
                j.id
            );
            prop_assert_eq!(j.owner.is_some(), j.state == JobState::Running);
            prop_assert_eq!(j.finished_at, m.finished_at, "job {}", j.id);
            prop_assert_eq!(
                j.reason.is_some(),
                m.deaths >= supervisor_store::SUPERVISOR_DEATHS && j.state == JobState::Dead,
                "job {}",
                j.id
            );
        }
        let counts = s.counts(now).unwrap();
        prop_assert_eq!(counts.values().sum::<u64>(), model.len() as u64);
        for state in JobState::ALL {
            let n = model.iter().filter(|m| m.state == state).count() as u64;
            prop_assert_eq!(counts[&state], n, "{}", state);
        }
    }
    Ok(())
}

/// A running job given back at `now`: queued without using an attempt (and no end time,
/// as its claim left it), or canceled at `now` if a cancel was requested.
fn give_back(m: &mut M, now: f64) {
    m.owner = None;
    if m.cancel_requested {
        m.state = JobState::Canceled;
        m.finished_at = Some(now);
    } else {
        m.state = JobState::Queued;
        m.attempts -= 1;
    }
}

/// A fixed sequence touching every operation, so a failure here is easy to read.
pub fn smoke(new: Factory) {
    run(
        new,
        vec![
            Op::Submit {
                target: 0,
                key: Some(1),
                count: 2,
            },
            Op::Submit {
                target: 2,
                key: None,
                count: 2,
            },
            Op::Submit {
                target: 3,
                key: None,
                count: 1,
            },
            Op::Submit {
                target: 4,
                key: None,
                count: 1,
            },
            Op::Claim {
                inst: 0,
                c1: 2,
                c2: 1,
            },
            Op::Record {
                pick: 0,
                kind: 1,
                next: 1,
                retry_in: 5,
                stale: 0,
            },
            Op::Claim {
                inst: 1,
                c1: 2,
                c2: 2,
            },
            Op::Advance { dt: 6 },
            Op::Claim {
                inst: 1,
                c1: 2,
                c2: 2,
            },
            Op::Cancel { pick: 1 },
            Op::Release {
                pick: 0,
                stale: false,
            },
            Op::Orphans { dead: 1 },
            Op::Record {
                pick: 0,
                kind: 3,
                next: 1,
                retry_in: 3,
                stale: 1,
            },
        ],
    )
    .unwrap();
}
