"""The Python reference (tinyproto 3.0) as the peer of the firmware under QEMU.

    peer.py client HOST PORT   send messages of 0 B to 3 MB to the firmware
                               echo server; check echoes (up to 1 KiB) and
                               receipts (length and FNV-1a, for larger ones)
    peer.py server HOST PORT   echo server for the firmware client; exits
                               after its first connection ends (or 90 s)

Exit status 0 only if every check passed.
"""
import struct
import sys
import threading

from tinyproto.client import TinyProtoClient
from tinyproto.connection import TinyProtoConnection
from tinyproto.connection_details import TinyProtoConnectionDetails
from tinyproto.server import TinyProtoServer

SIZES = [0, 1, 1024, 65536, 1 << 20, 3_000_000]
WHOLE = 1024  # the firmware's message buffer: larger messages get a receipt


def payload(n, seed):
    return bytes((((i * 31) ^ (i >> 8)) & 0xFF) ^ seed for i in range(n))


def fnv1a(data):
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def expected(msg):
    if len(msg) <= WHOLE:
        return msg
    return struct.pack(">II", len(msg), fnv1a(msg))


def client(host, port):
    done = threading.Event()
    result = {"ok": 0, "err": None}
    messages = [payload(n, i) for i, n in enumerate(SIZES)]
    answers = [expected(m) for m in messages]

    class Checker(TinyProtoConnection):
        def pre_loop(self):
            self.i = 0
            self.transmit(messages[0])

        def transmission_received(self, msg):
            if bytes(msg) != answers[self.i]:
                result["err"] = "reply %d (to %d bytes) differs" % (self.i, SIZES[self.i])
                self.shutdown = True
                done.set()
                return
            result["ok"] += 1
            self.i += 1
            if self.i == len(SIZES):
                self.shutdown = True
                done.set()
                return
            self.transmit(messages[self.i])

    c = TinyProtoClient(connection_handler=Checker, timeout=60)
    c.connect_to(TinyProtoConnectionDetails(host, port))
    if not done.wait(90):
        print("python client: timed out after %d replies" % result["ok"], flush=True)
        return 1
    if result["err"]:
        print("python client: " + result["err"], flush=True)
        return 1
    print("python client: %d replies ok (0 B to 3 MB)" % result["ok"], flush=True)
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
    timer = threading.Timer(90, lambda: setattr(s, "shutdown", True))
    timer.daemon = True
    timer.start()
    print("python server: listening", flush=True)
    s.start()
    print("python server: echoed %d messages" % len(served), flush=True)
    return 0 if served else 1


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.exit(client(host, port) if mode == "client" else server(host, port))
