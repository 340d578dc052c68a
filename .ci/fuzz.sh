#!/usr/bin/env bash
# Fuzz smoke run: replays the seed corpus under `cargo test`, then runs each
# cargo-fuzz target for FUZZ_SECONDS (default 30) seconds. Fails on any crash,
# leak, timeout or harness assertion. Installs what it needs on a fresh
# machine: a nightly toolchain (falling back to stable with RUSTC_BOOTSTRAP=1
# if nightly cannot be installed), cargo-fuzz, and a C++ compiler for
# libFuzzer.
#
#   FUZZ_SECONDS=30 FUZZ_TARGETS="receiver roundtrip session" .ci/fuzz.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
seconds="${FUZZ_SECONDS:-30}"
read -r -a targets <<<"${FUZZ_TARGETS:-receiver roundtrip session}"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '==> %s\n' "$*"; }

# libFuzzer is C++, built by libfuzzer-sys through the cc crate.
if ! command -v c++ >/dev/null 2>&1; then
    log "installing a C++ compiler for libFuzzer"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi

toolchain=(+nightly)
if rustup run nightly rustc --version >/dev/null 2>&1; then
    log "using $(rustup run nightly rustc --version)"
elif rustup toolchain install nightly --profile minimal; then
    log "installed $(rustup run nightly rustc --version)"
else
    log "nightly unavailable: using the default toolchain with RUSTC_BOOTSTRAP=1"
    toolchain=()
    export RUSTC_BOOTSTRAP=1
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$root/fuzz"

log "replaying the seed corpus (cargo test)"
cargo test --locked

log "building the fuzz targets"
cargo "${toolchain[@]}" fuzz build

logs=$(mktemp -d)
summary=()
for target in "${targets[@]}"; do
    log "fuzzing $target for ${seconds}s"
    # -timeout: any single input slower than 10 s is a hang, and fails.
    if ! cargo "${toolchain[@]}" fuzz run "$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        >"$logs/$target.log" 2>&1; then
        tail -n 60 "$logs/$target.log"
        log "FAILED: $target crashed; the input is under fuzz/artifacts/$target/"
        log "reproduce: cd fuzz && cargo +nightly fuzz run $target fuzz/artifacts/$target/<file>"
        exit 1
    fi
    runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$logs/$target.log" | tail -n 1 || true)
    summary+=("$target: ${runs:-finished (no run count printed)}")
done

log "fuzz summary"
printf '    %s\n' "${summary[@]}"
