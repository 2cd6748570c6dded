"""carpd's control socket: fwcluster.ctlsock's JSON-lines protocol, plus
{"cmd":"subscribe"}, after which the connection receives one JSON line per
role change (first the current role of every vhid) until the client closes.
"""
from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Callable

from fwcluster import ctlsock

MAX_QUEUED = 10000  # a stuck subscriber must not eat our memory


class ControlServer:
    def __init__(self, path: str, handler: ctlsock.Handler, snapshot: Callable[[], list[dict]]):
        self.path = path
        self.handler = handler
        self.snapshot = snapshot  # current role lines for a new subscriber
        self.subscribers: set[asyncio.Queue] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await ctlsock.serve(self.path, self.handler, {"subscribe": self._subscribe})

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
            if q.qsize() < MAX_QUEUED:
                q.put_nowait(event)

    async def _subscribe(self, req: dict) -> AsyncIterator[dict]:
        q: asyncio.Queue = asyncio.Queue()
        for ev in self.snapshot():
            q.put_nowait(ev)
        self.subscribers.add(q)
        try:
            while (ev := await q.get()) is not None:  # None: carpd is stopping
                yield ev
        finally:
            self.subscribers.discard(q)
