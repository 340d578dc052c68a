"""Shared bits of the interop helpers: the zlib plugin and the test payload."""
import zlib

import tinyproto


class ZlibPlugin(tinyproto.TinyProtoPlugin):
    """The Python side of tinyproto_std::ZlibPlugin."""

    def msg_transmit(self, msg):
        return zlib.compress(bytes(msg))

    def msg_receive(self, msg):
        return bytearray(zlib.decompress(bytes(msg)))


_CYCLE = bytes(range(251))


def pattern(n):
    """n bytes of i % 251, the same as the Rust tests' pattern()."""
    return (_CYCLE * (n // 251 + 1))[:n]
