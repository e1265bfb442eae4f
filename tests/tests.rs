//! The integration tests: one binary (built once), one module per area. Every test
//! runs the real `supervisor` binary in its own temp dir.

mod chaos;
mod common;
mod contract;
mod control;
mod down;
mod http;
mod jobs;
mod notify;
mod operate;
mod postgres;
mod privilege;
mod process;
mod reload;
mod smoke;
mod survive;
