#!/usr/bin/env bash
# tinyproto-embassy on an emulated Cortex-M3: builds examples/qemu-test for
# thumbv7m-none-eabi and runs it under QEMU (lm3s6965evb). The program's
# semihosting exit status is the verdict (0 pass, 1 panic/failed check).
# Installs what it needs on a fresh machine. About 1 min (mostly the build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v qemu-system-arm >/dev/null 2>&1; then
    echo "==> installing qemu-system-arm"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends qemu-system-arm binutils-arm-none-eabi >/dev/null
fi
rustup target add thumbv7m-none-eabi >/dev/null

cd examples/qemu-test
# An explicit target dir: a CARGO_TARGET_DIR in the environment must not
# move the ELF away from where QEMU is pointed.
cargo build --release --locked --target-dir target 2>&1 | tail -n 3
elf=target/thumbv7m-none-eabi/release/tinyproto-embassy-qemu-test
echo "==> running $elf under QEMU (60 s wall limit)"
set +e
timeout 60 qemu-system-arm -cpu cortex-m3 -machine lm3s6965evb -nographic \
    -semihosting-config enable=on,target=native -kernel "$elf"
status=$?
set -e
if [ "$status" -ne 0 ]; then
    echo "FAIL: QEMU verdict $status" >&2
    exit 1
fi
echo "embassy-qemu: 1 passed, 0 failed"
