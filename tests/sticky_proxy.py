"""A test-only reverse proxy with sticky sessions: each client address always reaches the same server process.

What nginx's `ip_hash` does in front of several `streamlit run app.py` processes (README, "More than one
core"): a Streamlit session (its websocket, its uploads, its media files) lives in one server's memory, so every
connection of one browser must reach the same process. The proxy relays bytes (HTTP and websockets alike); the
backend is chosen from the client's address (a classroom's computers each have their own; tests bind clients
to 127.0.0.2, 127.0.0.3...). `chosen` records which backend each client address got.
"""
from __future__ import annotations

import asyncio
import hashlib
import threading


class StickyProxy:
    """Listens on 127.0.0.1:<port>, relays each connection to backends[hash(client address) % len(backends)]."""

    def __init__(self, backends: list[tuple[str, int]], port: int):
        self.backends, self.port = backends, port
        self.chosen: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server = None

    def backend_for(self, address: str) -> int:
        return int.from_bytes(hashlib.sha256(address.encode()).digest()[:4], "big") % len(self.backends)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer) -> None:
        address = client_writer.get_extra_info("peername")[0]
        index = self.chosen.setdefault(address, self.backend_for(address))
        try:
            backend_reader, backend_writer = await asyncio.open_connection(*self.backends[index])
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._relay(client_reader, backend_writer), self._relay(backend_reader, client_writer))

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._ready.set()
        async with self._server:
            try:
                await self._server.serve_forever()
            except asyncio.CancelledError:  # stop() closed it
                pass

    def start(self) -> "StickyProxy":
        threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.loop.call_soon_threadsafe(self._server.close)
