//! Two connections (as two processes would have) claiming from one file never double-claim.

mod common;

use std::collections::BTreeSet;

use common::*;
use supervisor_store::{JobStore, NewJob, Next, Outcome, OutcomeKind, SqliteStore};

#[test]
fn two_handles_claiming_at_once_never_double_claim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let mut s = SqliteStore::open(&path).unwrap();
    let total = 2_000;
    let jobs: Vec<NewJob> = (0..total).map(|_| job("true")).collect();
    let ids: BTreeSet<i64> = s.submit(&jobs, 1.0).unwrap().into_iter().collect();
    drop(s);

    let threads: Vec<_> = (0..2u32)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut s = SqliteStore::open(&path).unwrap();
                let me = instance(&mut s, 100 + t);
                let routes = [matching("g", &[])];
                let mut mine = Vec::new();
                loop {
                    let n = 1 + (mine.len() as u32 % 3);
                    let res = s
                        .claim(me, &routes, &mut credits(&[("g", n)]), 2.0)
                        .unwrap();
                    if res.jobs.is_empty() {
                        break;
                    }
                    for c in res.jobs {
                        let ok = Outcome {
                            kind: OutcomeKind::Succeeded,
                            exit_code: Some(0),
                            signal: None,
                        };
                        assert!(s
                            .record_outcome(c.id, c.attempt, me, &ok, Next::Done, 3.0)
                            .unwrap());
                        mine.push(c.id);
                    }
                }
                mine
            })
        })
        .collect();
    let results: Vec<Vec<i64>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut seen = BTreeSet::new();
    for id in results.iter().flatten() {
        assert!(seen.insert(*id), "job {id} claimed twice");
    }
    assert_eq!(seen, ids);
    eprintln!(
        "claims per handle: {:?}",
        results.iter().map(Vec::len).collect::<Vec<_>>()
    );
}
