//! cargo-fuzz target `action_data`: see fuzz/checks/action_data.rs for what it feeds and what must hold.
#![no_main]

#[path = "../checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::action_data::check(data);
});
