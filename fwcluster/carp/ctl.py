"""carpd's control socket: fwcluster.control's JSON-lines protocol, plus
{"cmd":"subscribe"}, after which the connection receives one JSON line per
role change (first the current role of every vhid) until the client closes.
"""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Awaitable, Callable

from fwcluster.control import MAX_LINE

Handler = Callable[[dict], Awaitable[dict]]


class ControlServer:
    def __init__(self, path: str, handler: Handler, snapshot: Callable[[], list[dict]]):
        self.path = path
        self.handler = handler
        self.snapshot = snapshot  # current role lines for a new subscriber
        self.subscribers: set[asyncio.Queue] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for q in list(self.subscribers):
                q.put_nowait(None)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def publish(self, event: dict) -> None:
        for q in self.subscribers:
            if q.qsize() < 10000:  # a stuck subscriber must not eat our memory
                q.put_nowait(event)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or "cmd" not in req:
                        raise ValueError("request must be an object with a 'cmd' key")
                    if req["cmd"] == "subscribe":
                        await self._stream(reader, writer)
                        return
                    reply = await self.handler(req)
                except Exception as e:  # a bad request must never kill the daemon
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _stream(self, reader, writer) -> None:
        q: asyncio.Queue = asyncio.Queue()
        for ev in self.snapshot():
            q.put_nowait(ev)
        self.subscribers.add(q)
        # The client closing its end is noticed by a pending read.
        closed = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                get = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    return
                ev = get.result()
                if ev is None:
                    return
                writer.write(json.dumps(ev).encode() + b"\n")
                await writer.drain()
        finally:
            self.subscribers.discard(q)
            closed.cancel()
