//! cargo-fuzz target `telegram`: see fuzz/checks/telegram.rs for what it feeds and what must hold.
#![no_main]

#[path = "../checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::telegram::check(data);
});
