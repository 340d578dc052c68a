"""A reference tinyproto 3.0 server for the interop tests.

Echoes every message. On b"req" it asks the client b"question" from inside
transmission_received, waits for the answer with receive(), and replies
b"got:" + answer. Prints "PORT <n>" once listening on 127.0.0.1, and ends
by itself after --lifetime seconds.

    python py_server.py [--zlib] [--lifetime 120]
"""
import argparse
import sys
import time

import tinyproto

from common import ZlibPlugin


class EchoConnection(tinyproto.TinyProtoConnection):
    def transmission_received(self, msg):
        if bytes(msg) == b"req":
            self.transmit(b"question")
            answer = self.receive()
            self.transmit(b"got:" + bytes(answer))
        else:
            self.transmit(msg)


class Server(tinyproto.TinyProtoServer):
    deadline = 0.0

    def pre_loop(self):
        port = self.listen_socks[0].getsockname()[1]
        print(f"PORT {port}", flush=True)

    def loop_pass(self):
        if time.monotonic() > self.deadline:
            self.shutdown = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--zlib", action="store_true")
    parser.add_argument("--lifetime", type=float, default=120.0)
    args = parser.parse_args()
    # The reference refuses port 0 in TinyProtoConnectionDetails: ask for a
    # placeholder port, then bind to an ephemeral one.
    details = tinyproto.TinyProtoConnectionDetails("127.0.0.1", 1)
    details.socket_connect_details = ("127.0.0.1", 0)
    plugins = [ZlibPlugin] if args.zlib else []
    server = Server([details], connection_handler=EchoConnection, connection_plugin_list=plugins)
    Server.deadline = time.monotonic() + args.lifetime
    server.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
