#!/usr/bin/env bash
# tinyproto-embassy: no_std builds (Cortex-M0 thumbv6m, Cortex-M4F thumbv7em;
# without logging, with defmt, with log), the firmware examples (with and
# without defmt) with their flash/RAM report, the firmware template, and the
# throughput benchmark table (release, in-memory link). Installs what it
# needs. About 3-4 min.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v arm-none-eabi-size >/dev/null 2>&1; then
    echo "==> installing binutils-arm-none-eabi"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends binutils-arm-none-eabi >/dev/null
fi
rustup target add thumbv6m-none-eabi thumbv7em-none-eabihf >/dev/null

for target in thumbv6m-none-eabi thumbv7em-none-eabihf; do
    for features in "" "--features defmt" "--features log" "--no-default-features --features medium-ip" \
        "--features tls" "--features tls,defmt"; do
        echo "==> cargo build -p tinyproto-embassy --target $target $features"
        # shellcheck disable=SC2086
        cargo build -q -p tinyproto-embassy --target "$target" $features
    done
done
if cargo build -q -p tinyproto-embassy --features defmt,log 2>/dev/null; then
    echo "FAIL: defmt and log together must not compile" >&2
    exit 1
fi

echo "==> firmware examples (thumbv7em-none-eabihf)"
(
    cd examples/firmware
    cargo build -q --release --locked --features defmt --target-dir target/defmt
    cargo build -q --release --locked --target-dir target
    python3 size-report.py target/thumbv7em-none-eabihf/release
    # The board-neutral echo server's budget: 8 KiB of flash over the same
    # board's raw TCP echo (measured with rustc 1.95; override for another).
    budget="${FIRMWARE_BUDGET_ECHO_SERVER:-8192}"
    flash() { arm-none-eabi-size "target/thumbv7em-none-eabihf/release/$1" | awk 'NR == 2 { print $1 + $2 }'; }
    over=$(($(flash echo_server) - $(flash raw_echo)))
    echo "echo_server: +$over B of flash over raw_echo (budget $budget B)"
    if ((over > budget)); then
        echo "FAIL: the echo server takes $over B of flash over raw_echo, over its budget of $budget B" >&2
        exit 1
    fi
)

echo "==> firmware template (thumbv7em-none-eabihf): builds clean as a user copies it"
(
    cd examples/firmware-template
    cargo build -q --release --locked --target-dir target
    cargo clippy -q --release --locked --target-dir target -- -D warnings
    cargo fmt --check
    arm-none-eabi-size target/thumbv7em-none-eabihf/release/tinyproto-firmware-template
)

echo "==> throughput benchmark (release)"
cargo bench -q -p tinyproto-embassy --bench throughput
