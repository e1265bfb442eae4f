//! Property test: random operation sequences against `SqliteStore` and a plain in-memory
//! model of the contract's state rules must agree, job by job.

mod common;

use common::model::{op, run, smoke};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(common::sqlite, ops)?;
    }
}

#[test]
fn model_smoke() {
    smoke(common::sqlite);
}
