#!/usr/bin/env python3
"""Flash/RAM of the firmware examples and tinyproto's share.

    size-report.py DIR   (DIR holds the release ELFs echo_server, client, raw_echo, nic_bench)

Prints arm-none-eabi-size's figures (flash = text + data, RAM = data + bss),
the code in symbols of the tinyproto and tinyproto_embassy crates (after LTO
some of it is inlined into callers, so this is a lower bound), and the
difference to raw_echo, the same firmware echoing raw TCP without tinyproto.

Then where the echo server's extra bytes went: every instruction of .text
counted by the source file it came from (the innermost inlined frame of
the DWARF line table, `arm-none-eabi-objdump -d -l`; the release profile
keeps debug info, which does not reach the flash), echo_server against
raw_echo.
"""
import collections
import re
import subprocess
import sys

d = sys.argv[1]


def size(elf):
    out = subprocess.run(["arm-none-eabi-size", f"{d}/{elf}"], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(x) for x in out.splitlines()[1].split()[:3])
    return text, data, bss


def tinyproto_code(elf):
    out = subprocess.run(["arm-none-eabi-nm", "-S", "-C", f"{d}/{elf}"], capture_output=True, text=True, check=True).stdout
    total = 0
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[2].lower() not in ("t", "r"):
            continue
        name = parts[3]
        # The crates' own items, including their generic code instantiated
        # here; not the firmware crate's.
        if re.search(r"(^|[<\s(&])tinyproto(_embassy)?::", name):
            total += int(parts[1], 16)
    return total


rows = []
for elf in ("echo_server", "client", "raw_echo", "nic_bench"):
    text, data, bss = size(elf)
    rows.append((elf, text + data, data + bss, text, data, bss, tinyproto_code(elf)))
base = rows[2]
print("| binary | flash B | RAM B | .text | .data | .bss | tinyproto code B (symbols) | flash vs raw_echo |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    diff = "" if r[0] == "raw_echo" else f"{r[1] - base[1]:+d}"
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {diff} |")


def code_by_source(elf):
    """Bytes of .text per source file, by the innermost inlined frame."""
    out = subprocess.run(["arm-none-eabi-objdump", "-d", "-l", "-j", ".text", f"{d}/{elf}"],
                         capture_output=True, text=True, check=True).stdout
    where, counts = "?", collections.Counter()
    for line in out.splitlines():
        if re.match(r"^[0-9a-f]+ <", line):
            where = "?"
        elif m := re.match(r"^(/\S+):\d+", line):
            where = m.group(1)
        elif m := re.match(r"^\s+[0-9a-f]+:\s+((?:[0-9a-f]{2,4} )+)", line):
            counts[where] += len(m.group(1).replace(" ", "")) // 2
    return counts


def source_group(path):
    """A source file as the table names it: tinyproto's own files, or the crate."""
    if "/library/" in path and "/rustc/" in path:
        return "core/alloc library code inlined (moves, Option/Result, cells)"
    if m := re.search(r"/(core|adapters/embassy|examples/[^/]+)/src/(.*)$", path):
        crate = {"core": "tinyproto", "adapters/embassy": "tinyproto-embassy"}.get(m.group(1), "firmware")
        return f"{crate} {m.group(2)}"
    if m := re.search(r"/registry/src/[^/]+/([A-Za-z0-9_-]+?)-\d+\.\d+\.\d+", path):
        return m.group(1)
    return "unattributed"


def grouped(elf):
    groups = collections.Counter()
    for path, n in code_by_source(elf).items():
        groups[source_group(path)] += n
    return groups


server, raw = grouped("echo_server"), grouped("raw_echo")
rows = sorted(((server[k] - raw[k], k) for k in set(server) | set(raw)), reverse=True)
print()
print("| where echo_server's extra code came from | echo_server B | raw_echo B | difference B |")
print("|---|---|---|---|")
for diff, k in rows:
    if abs(diff) >= 64:
        print(f"| {k} | {server[k]} | {raw[k]} | {diff:+d} |")
rest = sum(diff for diff, _ in rows if abs(diff) < 64)
print(f"| everything else | | | {rest:+d} |")
print(f"| .text code in all | {sum(server.values())} | {sum(raw.values())} | {sum(server.values()) - sum(raw.values()):+d} |")
