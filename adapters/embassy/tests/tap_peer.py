"""The Python reference (tinyproto 3.0) as a peer of the TAP test.

    tap_peer.py client HOST PORT   connect, send SIZES messages, check echoes
    tap_peer.py server HOST PORT   echo server; exits after its first connection ends

Exit status 0 only if every check passed.
"""
import sys
import threading

from tinyproto.client import TinyProtoClient
from tinyproto.connection import TinyProtoConnection
from tinyproto.connection_details import TinyProtoConnectionDetails
from tinyproto.server import TinyProtoServer

SIZES = [0, 1, 5, 1460, 1461, 65536, 200000]


def pattern(n, seed):
    return bytes(((i * 31 + seed) & 0xFF) for i in range(n))


def client(host, port):
    done = threading.Event()
    result = {"ok": 0, "err": None}

    class Checker(TinyProtoConnection):
        def pre_loop(self):
            self.i = 0
            self.transmit(pattern(SIZES[0], 0))

        def transmission_received(self, msg):
            if bytes(msg) != pattern(SIZES[self.i], self.i):
                result["err"] = "echo %d (%d bytes) differs" % (self.i, SIZES[self.i])
                self.shutdown = True
                done.set()
                return
            result["ok"] += 1
            self.i += 1
            if self.i == len(SIZES):
                self.shutdown = True
                done.set()
                return
            self.transmit(pattern(SIZES[self.i], self.i))

    c = TinyProtoClient(connection_handler=Checker, timeout=30)
    c.connect_to(TinyProtoConnectionDetails(host, port))
    if not done.wait(60):
        print("python client: timed out after %d echoes" % result["ok"], flush=True)
        return 1
    if result["err"]:
        print("python client: " + result["err"], flush=True)
        return 1
    print("python client: %d echoes ok" % result["ok"], flush=True)
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
    s.start()
    print("python server: echoed %d messages" % len(served), flush=True)
    return 0 if served else 1


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.exit(client(host, port) if mode == "client" else server(host, port))
