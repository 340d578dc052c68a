#!/usr/bin/env python3
"""Flash/RAM of the firmware examples and tinyproto's share.

    size-report.py DIR   (DIR holds the release ELFs echo_server, client, raw_echo, nic_bench)

Prints arm-none-eabi-size's figures (flash = text + data, RAM = data + bss),
the code in symbols of the tinyproto and tinyproto_embassy crates (after LTO
some of it is inlined into callers, so this is a lower bound), and the
difference to raw_echo, the same firmware echoing raw TCP without tinyproto.
"""
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
