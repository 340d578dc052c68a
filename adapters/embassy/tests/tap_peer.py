"""The Python reference (tinyproto 3.0) as the peer of an embassy-net stack:
the TAP test's, and the firmware's under QEMU (.ci/qemu-nic.sh).

    tap_peer.py client HOST PORT [--sizes 0,1,...] [--receipts-over N]
        connect, send messages of these sizes (default SIZES), check each
        reply: the echo, or for messages over N bytes the firmware echo
        server's receipt (length and FNV-1a, both 4 bytes big-endian)
    tap_peer.py server HOST PORT
        echo server; exits after its first connection ends (or 60 s)

Exit status 0 only if every check passed.
"""
import argparse
import struct
import sys
import threading

from tinyproto.client import TinyProtoClient
from tinyproto.connection import TinyProtoConnection
from tinyproto.connection_details import TinyProtoConnectionDetails
from tinyproto.server import TinyProtoServer

SIZES = [0, 1, 5, 1460, 1461, 65536, 200000]


def pattern(n, seed):
    return bytes(((i * 31 + seed) & 0xFF) for i in range(n))


def fnv1a(data):
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def client(host, port, sizes, receipts_over):
    done = threading.Event()
    result = {"ok": 0, "err": None}
    messages = [pattern(n, i) for i, n in enumerate(sizes)]
    replies = [
        m if receipts_over is None or len(m) <= receipts_over
        else struct.pack(">II", len(m), fnv1a(m))
        for m in messages
    ]

    class Checker(TinyProtoConnection):
        def pre_loop(self):
            self.i = 0
            self.transmit(messages[0])

        def transmission_received(self, msg):
            if bytes(msg) != replies[self.i]:
                result["err"] = "reply %d (to %d bytes) differs" % (self.i, sizes[self.i])
                self.shutdown = True
                done.set()
                return
            result["ok"] += 1
            self.i += 1
            if self.i == len(sizes):
                self.shutdown = True
                done.set()
                return
            self.transmit(messages[self.i])

    c = TinyProtoClient(connection_handler=Checker, timeout=30)
    c.connect_to(TinyProtoConnectionDetails(host, port))
    if not done.wait(60):
        print("python client: timed out after %d echoes" % result["ok"], flush=True)
        return 1
    if result["err"]:
        print("python client: " + result["err"], flush=True)
        return 1
    print("python client: %d replies ok (%s bytes)" % (result["ok"], ",".join(map(str, sizes))), flush=True)
    return 0


def _quiet_end(args):
    # The reference's connection thread raises this when the peer closes
    # between messages (its normal end); anything else is printed.
    if "Received zero bytes" in str(args.exc_value):
        print("python server: peer closed the connection", flush=True)
    else:
        sys.__excepthook__(args.exc_type, args.exc_value, args.exc_traceback)


def server(host, port):
    threading.excepthook = _quiet_end
    served = []

    class Echo(TinyProtoConnection):
        def transmission_received(self, msg):
            served.append(len(msg))
            self.transmit(bytes(msg))

    class OneShot(TinyProtoServer):
        def conn_shutdown(self, conn_id, conn_o):
            self.shutdown = True

    s = OneShot(listen_addresses=[TinyProtoConnectionDetails(host, port)], connection_handler=Echo)
    timer = threading.Timer(60, lambda: setattr(s, "shutdown", True))
    timer.daemon = True
    timer.start()
    print("python server: listening", flush=True)
    s.start()
    print("python server: echoed %d messages" % len(served), flush=True)
    return 0 if served else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["client", "server"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--receipts-over", type=int, default=None)
    args = parser.parse_args()
    if args.mode == "client":
        sizes = [int(n) for n in args.sizes.split(",")]
        sys.exit(client(args.host, args.port, sizes, args.receipts_over))
    sys.exit(server(args.host, args.port))
