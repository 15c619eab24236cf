//! Fuzzing regressions: the check of every fuzz target (`fuzz/checks/*.rs`, the very code the
//! cargo-fuzz targets run) over every input in `tests/fuzz_cases/<target>/`: hostile seeds
//! (truncated and deeply nested JSON, huge numbers, invalid UTF-8, `<script>`, emoji, long
//! callback data, forged signatures, ...) and every crash fuzzing found.
//!
//! A failing case names its file; run it alone with
//! `FUZZ_CASE=<file name> cargo test --test fuzz_regressions`. To fuzz: `fuzz/run.sh`.

#[path = "../fuzz/checks/mod.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

fn cases(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_cases")
        .join(target);
    let only = std::env::var("FUZZ_CASE").ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            only.as_deref()
                .is_none_or(|o| p.file_name().is_some_and(|n| n == o))
        })
        .collect();
    files.sort();
    files
}

fn run(target: &str) {
    checks::common::install_panic_counter();
    let check = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check)
        .expect("known target");
    let files = cases(target);
    if std::env::var("FUZZ_CASE").is_err() {
        assert!(
            files.len() >= 3,
            "tests/fuzz_cases/{target} needs seed inputs"
        );
    }
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("read case");
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(
                file.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} cases failed (the panic messages are above): {failed:?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn action_data() {
    run("action_data");
}

#[test]
fn templates() {
    run("templates");
}

#[test]
fn rpc() {
    run("rpc");
}

#[test]
fn telegram() {
    run("telegram");
}

#[test]
fn slack() {
    run("slack");
}

#[test]
fn discord() {
    run("discord");
}
