"""The control request {"cmd": "conntrack"} (fwctl conntrack show|count),
answered from a paced dump (syncd/dumps.py).

It used to dump, filter and describe the whole table in one turn of the
loop: ~1.4 s at 100k entries, and beyond ~130k the peers' 2 s timeout took
the member for dead (bulk transfers both ways). Now the table is read and
filtered a turn at a time as routine work (syncd/pacing.py) and the reply
goes out when the dump ends. One dump at a time: a request waits for the
running one, and more than MAX_PENDING at once are refused.
"""
from __future__ import annotations

import asyncio

from syncd import pacing
from syncd.core.ctquery import Query
from syncd.dumps import PacedDump

MAX_PENDING = 4          # requests running or waiting
ATTEMPTS = 2             # a dump the kernel interrupted is read again once


class Queries:
    def __init__(self):
        self.dump: PacedDump | None = None
        self.pending = 0
        self._one = asyncio.Lock()
        self._query: Query | None = None
        self._done: asyncio.Future | None = None

    async def answer(self, req: dict) -> dict:
        try:
            query = Query(req)
        except (TypeError, ValueError) as e:
            return {"ok": False, "error": f"bad request: {e}"}
        if self.pending >= MAX_PENDING:
            return {"ok": False, "retry": True,
                    "error": f"busy: {MAX_PENDING} conntrack requests already running or waiting"}
        self.pending += 1
        try:
            async with self._one:
                return await self._run(query)
        finally:
            self.pending -= 1

    async def _run(self, query: Query) -> dict:
        loop = asyncio.get_running_loop()
        if self.dump is None:
            self.dump = PacedDump(loop, self._piece, self._end, pacing.BACKGROUND_TURN, paced=True)
        for _ in range(ATTEMPTS):
            self._query, self._done = query, loop.create_future()
            try:
                self.dump.start()
                error = await self._done
            finally:
                self.dump.abort()       # a request cancelled (syncd stopping) stops reading
                self._query = None
            if error is None:
                return query.reply()
            query.restart()
        return {"ok": False, "error": error, "retry": True}

    def _piece(self, entries: list) -> None:
        self._query.add(entries)

    def _end(self, error: str | None) -> None:
        self._done.set_result(error)

    def close(self) -> None:
        if self.dump is not None:
            self.dump.close()
