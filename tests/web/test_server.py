"""alerts.web.server: a response's headers and body leave in one write; nothing is lost, reordered or held back."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from alerts.web.server import FLUSH_AT, GatheringHttpToolsProtocol, GatheringTransport


class Recording:
    """Stands in for the socket's transport: what was written, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_of_one_loop_step_become_one_write_in_order() -> None:
    async def scenario() -> Recording:
        real = Recording()
        gathering = GatheringTransport(real, asyncio.get_running_loop())
        gathering.write(b"HTTP/1.1 200 OK\r\n\r\n")
        gathering.write(b"")
        gathering.write(b"body")
        assert real.writes == []  # not yet: the end of this step sends them
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        gathering.writelines([b"next", memoryview(b" answer")])
        await asyncio.sleep(0)
        assert gathering.get_extra_info("peername") == "info:peername"  # the rest passes through
        return real

    real = asyncio.run(scenario())
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next answer"]


def test_close_sends_what_is_gathered_first_and_abort_drops_it() -> None:
    async def scenario() -> tuple[Recording, Recording]:
        loop = asyncio.get_running_loop()
        closed, aborted = Recording(), Recording()
        one, other = GatheringTransport(closed, loop), GatheringTransport(aborted, loop)
        one.write(b"last answer")
        one.close()
        other.write(b"never sent")
        other.abort()
        await asyncio.sleep(0)  # the scheduled flushes find nothing left
        return closed, aborted

    closed, aborted = asyncio.run(scenario())
    assert closed.writes == [b"last answer"] and closed.closed
    assert aborted.writes == [] and aborted.aborted


def test_a_large_answer_is_not_held_in_memory() -> None:
    async def scenario() -> Recording:
        real = Recording()
        gathering = GatheringTransport(real, asyncio.get_running_loop())
        gathering.write(b"x" * (FLUSH_AT - 1))
        assert real.writes == []
        gathering.write(b"yy")
        assert [len(w) for w in real.writes] == [FLUSH_AT + 1]
        assert gathering.get_write_buffer_size() == 0
        return real

    asyncio.run(scenario())


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for n in range(3):
            await send({"type": "http.response.body", "body": b"part%d;" % n, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
        return
    body = scope["path"].encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def served() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, http=GatheringHttpToolsProtocol, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def _read_all(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_a_real_server_answers_pipelined_keep_alive_streamed_and_head_requests(served: int) -> None:
    with socket.create_connection(("127.0.0.1", served), timeout=10) as connection:
        connection.sendall(
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /second HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = _read_all(connection)
    parts = answer.split(b"HTTP/1.1 200 OK\r\n")
    assert len(parts) == 5 and parts[0] == b""
    assert parts[1].endswith(b"\r\n\r\n/first")
    assert parts[2].endswith(b"content-length: 7\r\n\r\n")  # HEAD: the headers, no body
    assert b"transfer-encoding: chunked" in parts[3]
    assert parts[3].endswith(b"6\r\npart0;\r\n6\r\npart1;\r\n6\r\npart2;\r\n0\r\n\r\n")
    assert parts[4].endswith(b"connection: close\r\n\r\n/last")
