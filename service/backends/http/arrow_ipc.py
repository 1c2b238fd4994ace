"""The messages of an Arrow IPC stream, read from an HTTP body as its bytes arrive.

pyarrow's stream reader wants a file-like object it can block on; this reads one whole message
at a time from aiohttp's ``StreamReader`` instead, so the event loop is never blocked and memory
stays at one record batch whatever the stream's size.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import aiohttp
import pyarrow as pa

# Arrow IPC streaming format: each message is [0xFFFFFFFF] <int32 metadata length> <metadata
# flatbuffer, padded> <body>; a length of 0 ends the stream. Writers before Arrow 0.15 leave out
# the 0xFFFFFFFF continuation marker.
_CONTINUATION = b"\xff\xff\xff\xff"
# Field 3 of the flatbuffer ``Message`` table (version, header_type, header, bodyLength).
_BODY_LENGTH_SLOT = 4 + 2 * 3


async def arrow_messages(content: aiohttp.StreamReader) -> AsyncIterator[pa.ipc.Message]:
    """The messages of an Arrow IPC stream, each read in full before it is decoded.

    Reading message by message keeps memory at one record batch, whatever the stream's size.
    """
    while True:
        try:
            head = await content.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return  # the end of the body without an end-of-stream marker
        (length,) = struct.unpack("<i", head)
        if length == -1:
            (length,) = struct.unpack("<i", await content.readexactly(4))
        if length == 0:
            return
        if length < 0:
            raise ValueError(f"bad Arrow IPC metadata length {length}")
        metadata = await content.readexactly(length)
        body_length = _body_length(metadata)
        body = await content.readexactly(body_length) if body_length else b""
        frame = _CONTINUATION + struct.pack("<i", length) + metadata + body
        yield pa.ipc.read_message(pa.py_buffer(frame))


def _body_length(metadata: bytes) -> int:
    """``Message.bodyLength`` from a message's flatbuffer metadata (0 when absent)."""
    root = int.from_bytes(metadata[0:4], "little")
    vtable = root - int.from_bytes(metadata[root : root + 4], "little", signed=True)
    vtable_size = int.from_bytes(metadata[vtable : vtable + 2], "little")
    if vtable_size < _BODY_LENGTH_SLOT + 2:
        return 0
    offset = int.from_bytes(
        metadata[vtable + _BODY_LENGTH_SLOT : vtable + _BODY_LENGTH_SLOT + 2], "little"
    )
    if not offset:
        return 0
    length = int.from_bytes(metadata[root + offset : root + offset + 8], "little", signed=True)
    if length < 0:
        raise ValueError(f"bad Arrow IPC body length {length}")
    return length
