"""A TCP proxy on 127.0.0.1 that loses chosen HTTP responses *after* the server has sent them in full.

The fault it makes is the one an at-least-once client must survive: the collector committed the batch and
answered 200, the network dropped the answer, the client never heard it and retries. Working at the TCP
level (not as an HTTP proxy) means the client sees exactly what it would see in the wild: its connection
closed with no response bytes at all.

Requests are forwarded as bytes. Responses are framed by their ``Content-Length`` (every journeys answer has
one) so the proxy knows when a response is complete; for each response ``cut(n)`` (n = 0, 1, 2… over the
proxy's life) decides whether to forward it or to close the client's connection instead. Used by
tests/test_faults.py and bench/faults.py.

    proxy = await CuttingProxy("127.0.0.1", collector_port, cut=lambda n: n % 2 == 0).start()
    client = Client(key, host=proxy.url)
    ...
    await proxy.close()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from testkit.net import HOST


class CuttingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, cut: Callable[[int], bool]):
        self.upstream = (upstream_host, upstream_port)
        self.cut = cut
        self.responses = 0  # complete responses received from upstream
        self.cut_count = 0  # of which were dropped
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> "CuttingProxy":
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        requests = asyncio.create_task(self._pump(client_reader, upstream_writer))
        responses = asyncio.create_task(self._responses(upstream_reader, client_writer))
        self._tasks |= {requests, responses}
        try:
            await asyncio.wait({requests, responses}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (requests, responses):
                task.cancel()
            await asyncio.gather(requests, responses, return_exceptions=True)
            self._tasks -= {requests, responses}
            for writer in (client_writer, upstream_writer):
                writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def _responses(self, reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            length = _content_length(head)
            body = await reader.readexactly(length) if length else b""
            n = self.responses
            self.responses += 1
            if self.cut(n):
                # The whole answer arrived here, so the server is done with it; the client gets nothing.
                self.cut_count += 1
                transport = client_writer.transport
                transport.abort()  # RST, no bytes: the response is lost on the way back
                return
            client_writer.write(head + body)
            await client_writer.drain()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0
