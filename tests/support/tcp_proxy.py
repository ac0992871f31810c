"""A TCP proxy in front of CouchDB, so a test can take "CouchDB" down and bring it back."""

from __future__ import annotations

import asyncio


class TcpProxy:
    """127.0.0.1:port -> target; `mode` "up" forwards, "down" drops every connection at once,
    "hang" accepts and never answers."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.mode = "up"
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode != "up":
            for writer in list(self._writers):
                writer.transport.abort()

    async def stop(self) -> None:
        self.set_mode("down")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.mode == "down":
                return
            if self.mode == "hang":
                await reader.read()  # until the client gives up
                return
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            self._writers.add(up_writer)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                except (ConnectionError, OSError):
                    pass
                finally:
                    dst.transport.abort()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            self._writers.discard(up_writer)
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
