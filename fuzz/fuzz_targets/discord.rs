//! cargo-fuzz target `discord`: see fuzz/checks/discord.rs for what it feeds and what must hold.
#![no_main]

#[path = "../checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::discord::check(data);
});
