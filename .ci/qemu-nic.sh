#!/usr/bin/env bash
# The firmware examples on an emulated board with an emulated NIC: the
# echo server and client of examples/firmware, built for Arm MPS2 AN386
# (feature mps2-an386, LAN9118 driver), run under qemu-system-arm and
# talking to Linux's TCP:
#   - user-mode network (no root): tinyproto-std's `device check` and the
#     Python reference client against the firmware server, via hostfwd,
#     and a link taken down and up (QEMU's monitor) under one connection;
#   - TAP in a network namespace this script creates (root): the same two
#     clients against the firmware server, then the firmware client against
#     `tinyproto serve --echo` and against the Python reference server;
#   - on both, the throughput table of firmware nic_bench (tinyproto beside
#     raw TCP, both directions; informational);
#   - TAP: the firmware TLS client (feature tls, a test PKI made now by
#     firmware-pki.sh) against `tinyproto serve --tls-cert --tls-ca`: the link
#     check inside mutual TLS, an impostor server refused by the firmware, a
#     firmware without a certificate or with another CA's refused by the
#     server; and the TLS client's size beside the plain client's.
# Installs what it needs; as non-root it says so and runs the rest. Ends
# with `qemu-nic: N passed, F failed` (N, F: checks). About 1-2 min.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

need=()
command -v qemu-system-arm >/dev/null 2>&1 || need+=(qemu-system-arm)
command -v arm-none-eabi-size >/dev/null 2>&1 || need+=(binutils-arm-none-eabi)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ "${#need[@]}" -gt 0 ]; then
    echo "==> installing ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
rustup target add thumbv7em-none-eabihf >/dev/null
bash .ci/python-peer.sh
python=$root/.venv/bin/python

logs=$(mktemp -d)
echo "==> building the firmware for mps2-an386 (and its TLS client, with a test PKI made now) and the host tools"
pki=$logs/pki
bash .ci/firmware-pki.sh "$pki"
fw=examples/firmware/target/mps2-an386/thumbv7em-none-eabihf/release
(cd examples/firmware && cargo build -q --release --locked --features mps2-an386 --target-dir target/mps2-an386)
(cd examples/firmware && TINYPROTO_FW_TLS_DIR=$pki cargo build -q --release --locked --features tls \
    --target-dir target/mps2-an386 --bin tls_client)
python3 examples/firmware/size-report.py "$fw"
# The TLS client beside the plain one: same board, same link check.
(cd "$fw" && arm-none-eabi-size client tls_client) | awk '
    NR == 1 { printf "| image | flash B | RAM B |\n|---|---:|---:|\n"; next }
    { flash[$6] = $1 + $2; ram[$6] = $2 + $3; printf "| %s | %d | %d |\n", $6, $1 + $2, $2 + $3 }
    END { printf "TLS adds %d B of flash and %d B of RAM to the client\n",
          flash["tls_client"] - flash["client"], ram["tls_client"] - ram["client"] }'
cargo build -q --release -p tinyproto-std --example device
cargo build -q --release -p tinyproto-cli
device=$root/target/release/examples/device
tinyproto=$root/target/release/tinyproto
peer=$root/adapters/embassy/tests/tap_peer.py

passed=0
failed=0
pids=()
ns=""
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$ns" ]; then ip netns del "$ns" 2>/dev/null || true; fi
    rm -rf "$pki"
}
trap cleanup EXIT

pass() { passed=$((passed + 1)); echo "qemu-nic: PASS $*"; }
fail() { failed=$((failed + 1)); echo "qemu-nic: FAIL $*"; }

# qemu LOG ELF NIC [PREFIX...]: starts the firmware in the background;
# its monitor listens on $logs/monitor.sock.
qemu() {
    local log=$1 elf=$2 nic=$3
    shift 3
    rm -f "$logs/monitor.sock"
    "$@" timeout 120 qemu-system-arm -M mps2-an386 -display none -serial null \
        -monitor "unix:$logs/monitor.sock,server,nowait" \
        -semihosting-config enable=on,target=native -kernel "$elf" -nic "$nic" >"$log" 2>&1 &
    pids+=($!)
}

stop_qemu() {
    kill "${pids[-1]}" 2>/dev/null || true
    wait "${pids[-1]}" 2>/dev/null || true
}

# check_server WHAT ADDR [PREFIX...]: `device check` and the Python client
# against the firmware server at ADDR (each of `device check`'s checks counts).
check_server() {
    local what=$1 addr=$2
    shift 2
    local out=$logs/check.log
    "$@" timeout 120 "$device" check "$addr" >"$out" 2>&1 || true
    sed 's/^/    /' "$out"
    local counts
    counts=$(sed -n 's/^device-check: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$out")
    if [ -z "$counts" ]; then
        fail "$what: tinyproto-std device check did not finish"
    else
        passed=$((passed + ${counts% *}))
        failed=$((failed + ${counts#* }))
    fi
    # The echo server's replies: echoes up to 1 KiB, receipts beyond.
    if "$@" timeout 120 "$python" "$peer" client "${addr%:*}" "${addr##*:}" \
        --sizes 0,1,1024,65536,1048576,3000000 --receipts-over 1024 >"$out" 2>&1; then
        pass "$what: Python reference client: $(tail -n 1 "$out")"
    else
        fail "$what: Python reference client"
        sed 's/^/    /' "$out"
    fi
}

# bench WHAT TINYPROTO_ADDR RAW_ADDR [PREFIX...]: the throughput table of
# the firmware nic_bench (a check: every transfer is verified).
bench() {
    local what=$1 tp=$2 raw=$3
    shift 3
    if "$@" timeout 120 "$device" bench "$tp" "$raw" >"$logs/bench.log" 2>&1; then
        pass "$what: throughput, tinyproto beside raw TCP (informational figures):"
    else
        fail "$what: throughput"
    fi
    sed 's/^/    /' "$logs/bench.log"
}

# monitor COMMAND: one command to the running QEMU's monitor.
monitor() {
    "$python" - "$logs/monitor.sock" "$1" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
time.sleep(0.3)
PY
}

# link_flap ADDR LOG: one connection carries a message before the link
# goes down, one sent while it is down (TCP resends it), and one after it
# is back; the firmware logs both link changes (from the PHY interrupt).
link_flap() {
    local addr=$1 log=$2 out=$logs/flap.out
    rm -f "$logs/flap.in"
    mkfifo "$logs/flap.in"
    timeout 60 "$tinyproto" send --lines --reply "$addr" <"$logs/flap.in" >"$out" 2>"$logs/flap.err" &
    local sender=$!
    exec 3>"$logs/flap.in"
    echo before >&3
    wait_for "$out" "^before$" 10 || true
    monitor "set_link lan9118.0 off"
    wait_for "$log" "link down" 10 || true
    echo during >&3
    sleep 2
    monitor "set_link lan9118.0 on"
    wait_for "$log" "link up" 10 || true
    wait_for "$out" "^during$" 30 || true
    echo after >&3
    exec 3>&-
    local status=0
    wait "$sender" || status=$?
    if [ "$status" -eq 0 ] && [ "$(cat "$out")" = "$(printf 'before\nduring\nafter')" ] &&
        grep -q "link down" "$log" && [ "$(grep -c "link up" "$log")" -ge 2 ]; then
        pass "link down and up: the firmware saw both, and one connection carried messages before, during and after"
    else
        fail "link down and up (sender status $status)"
        sed 's/^/    /' "$out" "$logs/flap.err"
    fi
}

# wait_for LOG PATTERN SECS: until PATTERN appears in LOG.
wait_for() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# check_client WHAT LOG: the firmware client's start-up link check.
check_client() {
    if wait_for "$2" "link check: \(passed\|FAILED\)" 90 && grep -q "link check: passed" "$2"; then
        pass "$1: $(grep -c 'B echoed' "$2") echoes (0 B to 1 MiB) checked by the firmware"
    else
        fail "$1"
    fi
    sed 's/^/    /' "$2"
}

# client_with WHAT NAME READY CMD...: starts the server CMD in the namespace
# (until READY shows in its log), then the firmware client, and checks the
# client's link check; leaves the server's pid in $server.
client_with() {
    local what=$1 name=$2 ready=$3
    shift 3
    echo "==> TAP: firmware client -> $what at 192.168.1.10:7000"
    "${in_ns[@]}" timeout 120 "$@" >"$logs/$name-server.log" 2>&1 &
    server=$!
    pids+=("$server")
    wait_for "$logs/$name-server.log" "$ready" 10 || true
    qemu "$logs/$name-client.log" "$fw/client" "$tap" "${in_ns[@]}"
    check_client "TAP: firmware client with $what" "$logs/$name-client.log"
    stop_qemu
}

# 1. User-mode network (slirp): no root. The guest LAN is 192.168.1.0/24
#    with QEMU at .1, as on the TAP below; a host port forwards to :7000.
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "==> user-mode network: firmware echo server at 127.0.0.1:$port (forwarded)"
qemu "$logs/user.log" "$fw/echo_server" \
    "user,model=lan9118,net=192.168.1.0/24,host=192.168.1.1,hostfwd=tcp:127.0.0.1:$port-192.168.1.10:7000"
check_server "user-mode" "127.0.0.1:$port"
link_flap "127.0.0.1:$port" "$logs/user.log"
stop_qemu
sed 's/^/    firmware: /' "$logs/user.log"
raw_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
qemu "$logs/user-bench.log" "$fw/nic_bench" \
    "user,model=lan9118,net=192.168.1.0/24,host=192.168.1.1,hostfwd=tcp:127.0.0.1:$port-192.168.1.10:7000,hostfwd=tcp:127.0.0.1:$raw_port-192.168.1.10:7001"
bench "user-mode" "127.0.0.1:$port" "127.0.0.1:$raw_port"
stop_qemu

# 2. TAP in a network namespace: the host's side of the LAN is the kernel.
if [ "$(id -u)" != 0 ] || [ ! -e /dev/net/tun ]; then
    echo "qemu-nic: TAP set-up SKIPPED (needs root and /dev/net/tun to create a network namespace and a TAP device)"
else
    ns=tp-nic-$$
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" tuntap add name tap0 mode tap
    ip -n "$ns" addr add 192.168.1.1/24 dev tap0
    ip -n "$ns" link set tap0 up
    in_ns=(ip netns exec "$ns")
    tap="tap,ifname=tap0,script=no,downscript=no,model=lan9118,mac=02:00:00:00:00:0a"

    echo "==> TAP: firmware echo server at 192.168.1.10:7000"
    qemu "$logs/tap-server.log" "$fw/echo_server" "$tap" "${in_ns[@]}"
    check_server "TAP" "192.168.1.10:7000" "${in_ns[@]}"
    stop_qemu
    sed 's/^/    firmware: /' "$logs/tap-server.log"
    qemu "$logs/tap-bench.log" "$fw/nic_bench" "$tap" "${in_ns[@]}"
    bench "TAP" "192.168.1.10:7000" "192.168.1.10:7001" "${in_ns[@]}"
    stop_qemu

    # The firmware client dials 192.168.1.10:7000: now the kernel's address.
    ip -n "$ns" addr add 192.168.1.10/24 dev tap0
    tap="tap,ifname=tap0,script=no,downscript=no,model=lan9118,mac=02:00:00:00:00:14"

    client_with "tinyproto serve --echo" serve "listening on" \
        "$tinyproto" serve --echo --listen 192.168.1.10:7000
    kill "$server" 2>/dev/null || true
    client_with "the Python reference server" python "listening" \
        "$python" "$peer" server 192.168.1.10 7000
    if wait "$server"; then
        pass "TAP: Python reference server: $(tail -n 1 "$logs/python-server.log")"
    else
        fail "TAP: Python reference server"
        sed 's/^/    /' "$logs/python-server.log"
    fi

    # The TLS client: a server with a certificate from the firmware's CA
    # that requires client certificates from it (7443), and an impostor
    # whose certificate another CA signed (7444).
    echo "==> TAP: firmware TLS client -> tinyproto serve --tls-cert ... --tls-ca ... at 192.168.1.10:7443 and an impostor at :7444"
    "${in_ns[@]}" timeout 120 "$tinyproto" serve --echo --listen 192.168.1.10:7443 \
        --tls-cert "$pki/server.pem" --tls-key "$pki/server-key.pem" --tls-ca "$pki/fleet-ca.pem" \
        >"$logs/tls-server.log" 2>&1 &
    pids+=($!)
    "${in_ns[@]}" timeout 120 "$tinyproto" serve --echo --listen 192.168.1.10:7444 \
        --tls-cert "$pki/impostor.pem" --tls-key "$pki/impostor-key.pem" >"$logs/tls-impostor.log" 2>&1 &
    pids+=($!)
    wait_for "$logs/tls-server.log" "listening on" 10 || true
    wait_for "$logs/tls-impostor.log" "listening on" 10 || true
    fwlog=$logs/tls-client.log
    qemu "$fwlog" "$fw/tls_client" "$tap" "${in_ns[@]}"
    wait_for "$fwlog" "tls checks: done" 120 || true
    stop_qemu
    if grep -q "tls link check: passed" "$fwlog"; then
        pass "TAP TLS: the firmware verified the server, the server the firmware; $(grep -c 'B echoed' "$fwlog") echoes (0 B to 1 MiB) checked inside TLS"
    else
        fail "TAP TLS: link check inside mutual TLS"
    fi
    if grep -q "tls refused: an impostor server: Io(Tls(InvalidCertificate))" "$fwlog"; then
        pass "TAP TLS: the firmware refused a server whose certificate another CA signed"
    else
        fail "TAP TLS: the firmware refused the impostor server"
    fi
    # refused WHAT SERVER-LOG-LINE: the server refused the firmware, and it knows.
    refused() {
        if grep -q "tls refused: $1:" "$fwlog" && grep -q "$2" "$logs/tls-server.log"; then
            pass "TAP TLS: the server refused a firmware with $1 ($2)"
        else
            fail "TAP TLS: the server refused a firmware with $1"
        fi
    }
    refused "no client certificate" "peer sent no certificates"
    refused "a client certificate from another CA" "UnknownIssuer"
    if grep -q "ACCEPTED\|a message crossed" "$fwlog"; then
        fail "TAP TLS: a refused connection carried a message"
    fi
    sed 's/^/    firmware: /' "$fwlog"
    sed 's/^/    server: /' "$logs/tls-server.log"
fi

echo "qemu-nic: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
