"""A reference tinyproto 3.0 client for the interop tests.

Connects to 127.0.0.1:<port> with TinyProtoClient and a connection handler.
From pre_loop and transmission_received it sends, one at a time, the
pattern payload of each --sizes entry and checks the echo; with --req it
then sends b"req", answers the server's b"question" with b"answer" from
inside transmission_received, and expects b"got:answer". Prints
"PYCLIENT OK <n>" and exits 0 on success, exits 1 otherwise.

    python py_client.py --port P [--zlib] [--sizes 0,1,5] [--req]

With --expect-refusal it only greets, and prints "PYCLIENT REFUSED <error> | rest=<hex>"
when the server answers the greeting with anything but 0xFF.
"""
import argparse
import socket
import sys
import time

import tinyproto

from common import ZlibPlugin, pattern


class Checker(tinyproto.TinyProtoConnection):
    script = []
    outcome = {"done": False, "error": None, "checked": 0}

    def pre_loop(self):
        self.step = 0
        self.send_next()

    def send_next(self):
        if self.step >= len(self.script):
            Checker.outcome["done"] = True
            self.shutdown = True
            return
        self.transmit(self.script[self.step][0])

    def transmission_received(self, msg):
        msg = bytes(msg)
        if msg == b"question":
            self.transmit(b"answer")
            return
        expected = self.script[self.step][1]
        if msg != expected:
            Checker.outcome["error"] = (
                f"step {self.step}: got {len(msg)} bytes {msg[:16]!r}, "
                f"expected {len(expected)} bytes {expected[:16]!r}"
            )
            self.shutdown = True
            return
        Checker.outcome["checked"] += 1
        self.step += 1
        self.send_next()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--zlib", action="store_true")
    parser.add_argument("--sizes", default="0,1,5")
    parser.add_argument("--req", action="store_true")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--expect-refusal", action="store_true")
    args = parser.parse_args()

    if args.expect_refusal:
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=30)
        conn = tinyproto.TinyProtoConnection(sock, socket_already_up=True)
        try:
            conn._initialise_connection()
        except tinyproto.TinyProtoError as e:
            # The reference names the byte it got instead of 0xFF; anything
            # after it, up to the close, is reported too.
            sock.settimeout(10)
            rest = b""
            while len(rest) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                rest += chunk
            print(f"PYCLIENT REFUSED {e} | rest={rest.hex()}", flush=True)
            return 0
        print("PYCLIENT FAILED greeting accepted", flush=True)
        return 1

    script = []
    for size in filter(None, args.sizes.split(",")):
        payload = pattern(int(size))
        script.append((payload, payload))
    if args.req:
        script.append((b"req", b"got:answer"))
    Checker.script = script

    plugins = [ZlibPlugin] if args.zlib else []
    client = tinyproto.TinyProtoClient(
        connection_handler=Checker, connection_plugin_list=plugins, timeout=30
    )
    details = tinyproto.TinyProtoConnectionDetails("127.0.0.1", args.port)
    conn_id = client.connect_to(details)
    conn = client.active_connections[conn_id]
    deadline = time.monotonic() + args.timeout
    while conn.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    conn.shutdown = True
    outcome = Checker.outcome
    if outcome["done"] and outcome["error"] is None:
        print(f"PYCLIENT OK {outcome['checked']}", flush=True)
        return 0
    print(f"PYCLIENT FAILED {outcome}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
