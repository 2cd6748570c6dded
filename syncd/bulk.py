"""Bulk transfers of the running daemon, paced (the protocol is the pure
core's: Sync.bulk_begin / bulk_add / bulk_end).

A peer that starts, or lost the master role, asks for the whole table
(RESYNC_REQ). Answered with a blocking dump and the whole table queued at
once, it stalled the loop for the dump (~0.4 s at 100k entries) and put
every live event read after it behind 100k records on the stream. So the
dump is read as every dump is (syncd/dumps.py: a socket of its own per
peer served, `turn` entries per loop turn; not paced, a peer waits for
it) into a RefreshFeed that hands it to the core `chunk` entries at a
time while the peer has at most `window` messages unacknowledged, behind
live events. The core drops a dump copy of an entry a live event changed
since the bulk began (the event, on the same stream, carried newer state),
so the feed is never touched.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial

from syncd.core.entry import OP_UPSERT
from syncd.core.policy import syncable
from syncd.core.protocol import Sync
from syncd.core.refreshfeed import RefreshFeed
from syncd.dumps import Host, PacedDump

log = logging.getLogger("syncd")


@dataclass
class _Bulk:
    sync: Sync                   # the core it was begun on (a reload replaces it)
    feed: RefreshFeed
    sent: int = 0
    soon: bool = False           # a feed step is scheduled


class Bulks:
    def __init__(self, host: Host, chunk: int, window: int, turn: int):
        self.host = host
        self.chunk, self.window, self.turn = chunk, window, turn
        self.running: dict[str, _Bulk] = {}
        self.dumps: dict[str, PacedDump] = {}

    def start(self, peer: str) -> None:
        """Answer a Dump action (a running bulk to the peer starts over)."""
        h = self.host
        feed = RefreshFeed(self.chunk, self.window)
        feed.start([], open=True)
        self.running[peer] = _Bulk(h.sync, feed)
        h.sync.bulk_begin(peer, h.now())
        dump = self.dumps.get(peer)
        if dump is None:
            dump = self.dumps[peer] = PacedDump(asyncio.get_running_loop(),
                                                partial(self._piece, peer),
                                                partial(self._end, peer), self.turn, paced=False)
        dump.start()

    def close(self) -> None:
        for dump in self.dumps.values():
            dump.close()

    def _drop(self, peer: str) -> _Bulk:
        self.dumps[peer].abort()
        return self.running.pop(peer)

    def _abort(self, peer: str, why: str) -> None:
        b = self._drop(peer)
        log.warning("bulk transfer to %s: %s (starting again)", peer, why)
        b.sync.bulk_abort(peer, again=b.sync is self.host.sync)
        self.host.process()

    def _current(self, peer: str) -> _Bulk | None:
        b = self.running.get(peer)
        if b is None or b.sync is self.host.sync:
            return b
        # A reload replaced the core: its new sessions bring their own bulks.
        self._drop(peer).sync.bulk_abort(peer, again=False)
        return None

    def _piece(self, peer: str, entries: list) -> None:
        b = self._current(peer)
        if b is None:
            return
        own, flt = self.host.own, self.host.sync_filter
        b.feed.add([(OP_UPSERT, e) for e in entries if syncable(e, own, flt)])
        if not b.soon:
            self.feed(peer)

    def _end(self, peer: str, error: str | None) -> None:
        if error is not None:
            if peer in self.running:
                self._abort(peer, error)
            return
        b = self._current(peer)
        if b is not None:
            b.feed.end()
            if not b.soon:
                self.feed(peer)

    def feed(self, peer: str) -> None:
        """Hand the core the next chunk if the peer keeps up; end the bulk
        once the dump is read and sent."""
        b = self._current(peer)
        if b is None:
            return
        b.soon = False
        h, sync = self.host, b.sync
        chunk = b.feed.next_chunk(len(sync.peers[peer].tx.queue))
        if chunk:
            b.sent += sync.bulk_add(peer, [e for _op, e in chunk], h.now())
            h.process()
        if not b.feed.active:
            del self.running[peer]
            sync.bulk_end(peer, h.now())
            log.info("bulk transfer of %d entries to %s", b.sent, peer)
            h.process()
        elif chunk is not None and b.feed.pending:
            self._soon(peer, b)     # else the window is full: acks wake it

    def _soon(self, peer: str, b: _Bulk) -> None:
        # After the loop's next look at the sockets: live events first.
        if not b.soon:
            b.soon = True
            asyncio.get_running_loop().call_soon(self.feed, peer)

    def wake(self) -> None:
        """Acks came (or a tick): a bulk held back by the window may go on."""
        for peer, b in self.running.items():
            if b.feed.pending:
                self._soon(peer, b)
