//! The checks behind every fuzz target, shared with the regression test.
//!
//! Each module has one `pub fn check(data: &[u8])` that feeds the bytes to one parser (or
//! renderer) through the crates' public API and panics when an invariant breaks. The fuzz
//! targets (`fuzz/fuzz_targets/*.rs`) call it with libFuzzer's inputs; the ordinary test
//! `tests/fuzz_regressions.rs` includes this same directory with `#[path]` and calls it with
//! every file in `tests/fuzz_cases/<target>/`. So a crash found by fuzzing is reproduced by
//! `cargo test --test fuzz_regressions` exactly.
//!
//! Only crates the root `approvald` package depends on (or has as dev-dependencies) may be
//! used here, since the regression test compiles this code as part of that package.
#![allow(dead_code)]

pub mod action_data;
pub mod common;
pub mod discord;
pub mod rpc;
pub mod slack;
pub mod telegram;
pub mod templates;

/// The check a target runs on one input.
pub type Check = fn(&[u8]);

/// Every target, with the check it runs (the directory name under `tests/fuzz_cases/`).
pub const TARGETS: &[(&str, Check)] = &[
    ("action_data", action_data::check),
    ("templates", templates::check),
    ("rpc", rpc::check),
    ("telegram", telegram::check),
    ("slack", slack::check),
    ("discord", discord::check),
];
