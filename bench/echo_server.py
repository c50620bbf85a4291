"""The transport floor: a raw msgspec Unix-socket echo server with omnid's framing, on
the same asyncio event loop design, doing no work. ``python bench/echo_server.py PATH``."""

from __future__ import annotations

import asyncio
import sys

import msgspec
from floor import serve

from omnid_client.protocol import HEADER, IncomingRequest, ResponseFrame

_decode = msgspec.msgpack.Decoder(IncomingRequest).decode
_encoder = msgspec.msgpack.Encoder()


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(buf)
            if len(buf) < HEADER.size + n:
                break
            request = _decode(bytes(buf[HEADER.size : HEADER.size + n]))
            del buf[: HEADER.size + n]
            out = bytearray(HEADER.size)
            _encoder.encode_into(ResponseFrame(request.id, result=request.params), out, HEADER.size)
            HEADER.pack_into(out, 0, len(out) - HEADER.size)
            self.transport.write(out)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], Echo))
