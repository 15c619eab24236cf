#!/usr/bin/env bash
# Fuzz every target (or the ones named) for a bounded time each.
#
#   fuzz/run.sh [seconds-per-target] [target...]      (default: 30 s, all targets)
#
# Works on the stable toolchain: cargo-fuzz is run with RUSTC_BOOTSTRAP=1 (its -Z flags need
# it) and --sanitizer none (no ASan runtime on stable; Rust code is memory safe and the
# checks look for panics, hangs and broken invariants). Debug assertions and overflow checks
# are on. libFuzzer is built from C++ by libfuzzer-sys with the system compiler.
#
# Each target starts from tests/fuzz_cases/<target>/ (the regression cases) and keeps what it
# learns in fuzz/corpus/<target>/. A crash, hang or out-of-memory input lands in
# fuzz/artifacts/<target>/; reproduce it with
#   fuzz/run.sh repro <target> <file>
# and make it a regression case by copying it to tests/fuzz_cases/<target>/crash-<what> (then
# `cargo test --test fuzz_regressions` runs it like CI does).
#
# The targets that drive the chat channels send HTTP only to a fake API on 127.0.0.1 (every
# URL in an input is rewritten to it); when `unshare -n` is available the fuzzers also run in
# a network namespace of their own with only loopback, so nothing can leave this machine.
#
# Environment: CARGO_TARGET_DIR (default /work/target-fuzz); FUZZ_KEEP_GOING=1 to go on after
# a crash (libFuzzer's fork mode: every crash is saved, the time limit still holds), useful
# while a known bug is not fixed yet; FUZZ_NO_BUILD=1 to run the binaries already built;
# FUZZ_ARGS for more libFuzzer flags.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
all_targets=(action_data templates rpc telegram slack discord)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-fuzz}"
export RUSTC_BOOTSTRAP=1
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$CARGO_TARGET_DIR/$triple/release"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

build() {
    if [[ "${FUZZ_NO_BUILD:-0}" == 1 ]]; then
        return
    fi
    echo "== building the fuzz targets (first build is slow: every dependency is instrumented)"
    (cd "$here" && cargo fuzz build --sanitizer none "$@")
}

# Run a command with no network but loopback, when this machine allows it.
isolated() {
    if unshare -n true 2>/dev/null && command -v ip >/dev/null; then
        unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"
    else
        "$@"
    fi
}

if [[ "${1:-}" == "repro" ]]; then
    target="${2:?usage: fuzz/run.sh repro <target> <file>}"
    file="${3:?usage: fuzz/run.sh repro <target> <file>}"
    build "$target"
    isolated "$bin_dir/$target" "$file"
    exit
fi

seconds="${1:-30}"
[[ $# -gt 0 ]] && shift
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all_targets[@]}")

build

summary=()
found=0
for t in "${targets[@]}"; do
    corpus="$here/corpus/$t"
    artifacts="$here/artifacts/$t"
    seeds="$root/tests/fuzz_cases/$t"
    log="$here/artifacts/$t.log"
    mkdir -p "$corpus" "$artifacts"
    echo "== fuzzing $t for ${seconds}s (log: $log)"
    mode=()
    [[ "${FUZZ_KEEP_GOING:-0}" == 1 ]] && mode=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    set +e
    # shellcheck disable=SC2086
    (cd "$artifacts" && isolated "$bin_dir/$t" "$corpus" "$seeds" "${mode[@]}" \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" ${FUZZ_ARGS:-}) >"$log" 2>&1
    rc=$?
    set -e
    # Executions: libFuzzer's final stats, or (fork mode) its last progress line.
    execs=$( (grep -h 'stat::number_of_executed_units' "$log" || true) | awk '{s+=$2} END {print s+0}')
    if [[ "$execs" == 0 ]]; then
        execs=$( (grep -oE '^#[0-9]+' "$log" || true) | tail -1 | tr -d '#')
        execs=${execs:-0}
    fi
    crashes=$(find "$artifacts" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' \
        -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
    summary+=("$(printf '%-12s exit=%-3s executions=%-10s artifacts=%s' "$t" "$rc" "$execs" "$crashes")")
    if [[ $rc -ne 0 || $crashes -gt 0 ]]; then
        found=1
        grep -h -m3 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" || true
    fi
done

echo
echo "== summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [[ $found -ne 0 ]]; then
    echo "Crashes are in fuzz/artifacts/<target>/ (reproduce: fuzz/run.sh repro <target> <file>)."
    exit 1
fi
