"""A loopback TCP proxy that can slow down or stop the answers of the server behind it, on command.

Put in front of a real kube-apiserver (TLS passes through untouched: the client still verifies the server's
certificate, issued for 127.0.0.1), it makes the management API "hang" for one client only. Requests always
pass straight through — the server acts on them — while each chunk of the answers is held for :attr:`hold`
seconds before it is forwarded (``math.inf``: until the hold is lifted, a hang). Changing the hold with
:meth:`set_hold` applies at once, to chunks already waiting too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

__all__ = ["HoldingProxy"]


class HoldingProxy:
    """``127.0.0.1:<port>`` → ``target_host:target_port``, answers held for ``hold`` seconds."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.hold = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._changed = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def set_hold(self, seconds: float) -> None:
        """Hold every answer chunk arriving from now on for ``seconds`` (``math.inf``: until changed)."""
        self.hold = seconds
        self._changed.set()
        self._changed = asyncio.Event()

    def retarget(self, port: int) -> None:
        """Connections from now on go to ``port``; the open ones are cut (their clients reconnect, and land there)."""
        self.target_port = port
        for writer in list(self._writers):
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, server_writer))
        up = asyncio.create_task(self._pump(client_reader, server_writer, held=False))
        down = asyncio.create_task(self._pump(server_reader, client_writer, held=True))
        self._tasks.update((up, down))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            for writer in (client_writer, server_writer):
                writer.close()
                self._writers.discard(writer)
            self._tasks.difference_update((up, down))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, held: bool) -> None:
        while data := await reader.read(65536):
            if held:
                await self._wait_out(time.monotonic())
            writer.write(data)
            await writer.drain()

    async def _wait_out(self, arrived: float) -> None:
        """Until ``arrived + hold`` — re-evaluated whenever the hold changes."""
        while True:
            due = arrived + self.hold
            left = due - time.monotonic()
            if left <= 0:
                return
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(left) else left):
                    await changed.wait()
