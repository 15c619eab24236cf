//! cargo-fuzz target `templates`: see fuzz/checks/templates.rs for what it feeds and what must hold.
#![no_main]

#[path = "../checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::templates::check(data);
});
