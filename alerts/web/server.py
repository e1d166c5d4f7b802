"""uvicorn's httptools protocol, with a response's header block and body sent in one write.

uvicorn writes the status line and headers when the app sends ``http.response.start`` and the body when it
sends ``http.response.body``: two ``send()`` system calls, two TCP segments and two wake-ups of the client
for every page, where one would do. Under a scanner burst that second send was a measurable part of a link
page's CPU (benchmarks/README.md). Here the connection's transport gathers the writes made in one step of
the event loop and hands them to the real transport together at the end of that step (``loop.call_soon``):
same bytes, same order, one write. Closing or aborting the connection flushes (or drops) what is gathered
first; a large streamed answer is handed on as soon as it passes ``FLUSH_AT`` bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Gathered bytes beyond this go out at once (a streamed answer never waits in memory for the loop).
FLUSH_AT = 64 * 1024


class GatheringTransport:
    """Wraps an ``asyncio.Transport``: writes within one loop step become one write; everything else passes on."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, so it is typed by what is used.
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending, self._size = [], 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._size + int(self._transport.get_write_buffer_size())

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending, self._size = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, pause_reading, resume_reading, set_protocol, ...: the real transport's.
        return getattr(self._transport, name)


class GatheringHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` on a ``GatheringTransport`` (``alerts web`` passes it to uvicorn as ``http``)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(GatheringTransport(transport, self.loop))  # type: ignore[arg-type]
