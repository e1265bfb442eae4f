//! The pure supervision policy of `supervisor`.
//!
//! Everything here is a plain state machine: events in, commands out, time passed in as
//! a [`Time`] value, randomness passed in as a [`Random`] source. This crate knows
//! nothing of processes, files, sockets, threads or clocks; the binary's thin OS shell
//! feeds it what happened and carries out what it decides. That is what lets the tests
//! run thousands of randomized fault schedules in a second.
//!
//! - [`supervision`]: children, pools, restarts, dispatch with credits, jobs in flight,
//!   reload, shutdown: [`supervision::Core::handle`] and [`supervision::Core::next_deadline`].
//! - [`ledger`]: the grabber's side of dispatch: credits, epochs, runnable groups.
//! - [`backoff`]: oslo.service's exponential backoff with jitter.
//! - [`looping`]: oslo.service's looping calls as schedules: a fixed interval (for the
//!   heartbeats), the grabber's poll interval with its error backoff.
//! - [`doorbell`]: buildbot's doorbell loop: the grabber's loop.

pub mod backoff;
pub mod bounds;
pub mod doorbell;
pub mod ledger;
pub mod looping;
pub mod random;
pub mod spec;
pub mod supervision;
pub mod time;

pub use random::{Random, SplitMix64};
pub use time::Time;
