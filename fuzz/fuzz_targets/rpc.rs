//! cargo-fuzz target `rpc`: see fuzz/checks/rpc.rs for what it feeds and what must hold.
#![no_main]

#[path = "../checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::rpc::check(data);
});
