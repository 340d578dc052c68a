#!/usr/bin/env bash
# Footprint benchmark: builds examples/footprint (a tinyproto echo server for
# a Cortex-M4F, thumbv7em-none-eabihf, release, opt-level "s", LTO, one
# codegen unit) in three variants and reports flash and RAM:
#
#   baseline  the same UART echo loop without tinyproto
#   sans-io   tinyproto's sans-IO Machine (what the driver runs) in a polling superloop
#   driver    tinyproto::blocking::Connection (greet, receive, transmit)
#
# Flash taken by tinyproto is reported two ways: the sum of the symbols whose
# demangled names contain `tinyproto::` (an underestimate: LTO inlines most of
# it into the app's main), and the growth of .text over the baseline (what a
# firmware actually pays). RAM is the size of the `TINYPROTO_*` statics that
# hold all of tinyproto's state, plus .data/.bss totals; the stack frame of
# the app's main is shown too (the driver's futures live there during a call).
#
# Fails if the sans-IO build or the blocking driver needs more flash, or their state more RAM,
# than the C library lexus2k/tinyproto advertises (1.3 KiB flash, 60 B RAM);
# override with FOOTPRINT_MAX_FLASH / FOOTPRINT_MAX_RAM. Fails too if either
# exceeds its own budget (sans-IO 600 B, driver 1,188 B: what the core
# promises in its README, measured with rustc 1.95; another rustc may move
# them by tens of bytes); override with FOOTPRINT_BUDGET_SANS_IO /
# FOOTPRINT_BUDGET_DRIVER.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../examples/footprint"
export PATH="$HOME/.cargo/bin:$PATH"
target=thumbv7em-none-eabihf
max_flash="${FOOTPRINT_MAX_FLASH:-1331}"
max_ram="${FOOTPRINT_MAX_RAM:-60}"
declare -A budget=([sans-io]="${FOOTPRINT_BUDGET_SANS_IO:-600}" [driver]="${FOOTPRINT_BUDGET_DRIVER:-1188}")

rustup target add "$target" >/dev/null
if ! command -v arm-none-eabi-nm >/dev/null 2>&1; then
    echo "==> installing binutils-arm-none-eabi"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends binutils-arm-none-eabi >/dev/null
fi

# variant -> cargo feature arguments
declare -A features=([baseline]="--features baseline" [sans-io]="--features sans-io" [driver]="")
variants=(baseline sans-io driver)

section() { arm-none-eabi-size -A "$1" | awk -v s="$2" '$1 == s { print $2; found = 1 } END { if (!found) print 0 }'; }

# Sum of the sizes of symbols of the given nm types whose names match a regex.
symbols() {
    arm-none-eabi-nm --radix=d --size-sort -C -S "$1" |
        awk -v types="$2" -v re="$3" '
            { name = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ /, "", name) }
            index(types, $3) && name ~ re { sum += $2 + 0 }
            END { print sum + 0 }'
}

# Bytes the app main pushes and reserves on entry.
main_frame() {
    arm-none-eabi-objdump -d --no-show-raw-insn "$1" |
        awk '
            /^[0-9a-f]+ <.*__cortex_m_rt_main.*>:$/ { f = 1; next }
            f && /^$/ { f = 0 }
            f && /\tv?push/ { n = gsub(/,/, ","); bytes += 4 * (n + 1) }
            f && /\tsub(w)?\tsp, (sp, )?#/ { match($0, /#[0-9]+/); bytes += substr($0, RSTART + 1, RLENGTH - 1) }
            END { print bytes + 0 }'
}

declare -A text rodata ram syms state frame
for v in "${variants[@]}"; do
    echo "==> building the $v variant"
    # shellcheck disable=SC2086
    cargo build --release --locked --target-dir "target/$v" ${features[$v]}
    elf="target/$v/$target/release/tinyproto-footprint"
    text[$v]=$(section "$elf" .text)
    rodata[$v]=$(section "$elf" .rodata)
    ram[$v]=$(($(section "$elf" .data) + $(section "$elf" .bss)))
    syms[$v]=$(symbols "$elf" tTrR 'tinyproto::')
    state[$v]=$(symbols "$elf" bBdD '^TINYPROTO_')
    frame[$v]=$(main_frame "$elf")
done

elf="target/driver/$target/release/tinyproto-footprint"
echo
echo "tinyproto symbols left after LTO in the driver build (bytes, name):"
arm-none-eabi-nm --radix=d --size-sort -C -S "$elf" | awk '
    { name = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ /, "", name) }
    name ~ /tinyproto::|^TINYPROTO_/ { printf "  %6d  %s %s\n", $2 + 0, $3, name }'
echo "state statics (bytes): $(arm-none-eabi-nm --radix=d -S target/sans-io/$target/release/tinyproto-footprint "$elf" |
    awk '$4 ~ /^TINYPROTO_/ { printf "%s=%d ", $4, $2 + 0 }')"

echo
printf '%-9s %7s %8s %15s %16s %10s %11s %11s\n' variant .text .rodata "tinyproto syms" "flash vs base" ".data+.bss" "tp state" "main frame"
for v in "${variants[@]}"; do
    delta=$((${text[$v]} + ${rodata[$v]} - text[baseline] - rodata[baseline]))
    printf '%-9s %7d %8d %15d %16d %10d %11d %11d\n' "$v" "${text[$v]}" "${rodata[$v]}" \
        "${syms[$v]}" "$delta" "${ram[$v]}" "${state[$v]}" "${frame[$v]}"
done
echo "(bytes; 'flash vs base' = .text+.rodata over the baseline; 'tp state' = TINYPROTO_* statics;"
echo " reference: C lexus2k/tinyproto advertises 1.3 KiB flash (1331 B) and 60 B RAM)"

status=0
for variant in sans-io driver; do
    flash=$((${text[$variant]} + ${rodata[$variant]} - text[baseline] - rodata[baseline]))
    if ((flash > max_flash)); then
        echo "FAIL: the $variant build takes $flash B of flash, over $max_flash B" >&2
        status=1
    fi
    if ((flash > ${budget[$variant]})); then
        echo "FAIL: the $variant build takes $flash B of flash, over its budget of ${budget[$variant]} B" >&2
        status=1
    fi
done
if ((${state[driver]} > max_ram || ${state[sans-io]} > max_ram)); then
    echo "FAIL: tinyproto's state takes more than $max_ram B of RAM" >&2
    status=1
fi
exit "$status"
