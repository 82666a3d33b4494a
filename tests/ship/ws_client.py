"""A minimal WebSocket client (RFC 6455) over asyncio streams, for talking to a real
daphne process from tests. Text frames only, which is all the dashboard socket sends;
pings are answered, fragmented messages reassembled."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from urllib.parse import urlsplit

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TEXT, _CONTINUATION, _CLOSE, _PING, _PONG = 0x1, 0x0, 0x8, 0x9, 0xA


class HandshakeRefused(Exception):
    """The server answered the upgrade with something other than 101."""


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str, headers: dict[str, str]) -> WebSocket:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {parts.path or '/'} HTTP/1.1",
            f"Host: {parts.hostname}:{parts.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        response = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status = response.split("\r\n", 1)[0]
        if " 101 " not in status:
            writer.close()
            raise HandshakeRefused(status)
        digest = hashlib.sha1((key + _GUID).encode()).digest()  # noqa: S324 (the protocol's hash)
        headers_in = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in response.split("\r\n")[1:])
        )
        assert headers_in.get("sec-websocket-accept") == base64.b64encode(digest).decode()
        return cls(reader, writer)

    async def receive(self) -> str:
        """The next text message."""
        message = b""
        while True:
            opcode, fin, payload = await self._frame()
            if opcode == _PING:
                await self._send(_PONG, payload)
            elif opcode == _CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise ConnectionError(f"the server closed the socket (code {code})")
            elif opcode in (_TEXT, _CONTINUATION):
                message += payload
                if fin:
                    return message.decode()

    async def close(self) -> None:
        try:
            await self._send(_CLOSE, struct.pack("!H", 1000))
        except ConnectionError:
            pass
        self.writer.close()

    async def _frame(self) -> tuple[int, bool, bytes]:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        assert not second & 0x80, "servers never mask their frames"
        return first & 0x0F, bool(first & 0x80), await self.reader.readexactly(length)

    async def _send(self, opcode: int, payload: bytes) -> None:
        # Client frames are always masked (RFC 6455 5.3).
        mask = os.urandom(4)
        header = bytes([0x80 | opcode, 0x80 | len(payload)])  # control frames are short
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()
