"""Bulk transfers of the running daemon, paced (the protocol is the pure
core's: Sync.bulk_begin / bulk_add / bulk_end).

A peer that starts, or lost the master role, asks for the whole table
(RESYNC_REQ). Answered with a blocking dump and the whole table queued at
once, it stalled the loop for the dump (~0.4 s at 100k entries) and put
every live event read after it behind 100k records on the stream. So, as
full refreshes are (daemon.start_dump): the dump is read on a netlink
socket of its own (one per peer served, never shared with a refresh or an
anti-entropy round), DUMP_TURN entries per loop turn, into a RefreshFeed
that hands it to the core REFRESH_CHUNK entries at a time while the peer
has at most REFRESH_WINDOW messages unacknowledged, behind live events.
The core drops a dump copy of an entry a live event changed since the bulk
began (the event, on the same stream, carried newer state).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from syncd.conntrack import ConntrackError, Dumper
from syncd.core.entry import OP_UPSERT
from syncd.core.policy import syncable
from syncd.core.refreshfeed import RefreshFeed

log = logging.getLogger("syncd")


@dataclass
class _Bulk:
    sync: object                 # the core it was begun on (a reload replaces it)
    feed: RefreshFeed
    sent: int = 0
    soon: bool = False           # a feed step is scheduled
    reading: bool = True         # its dump socket is being read


class Bulks:
    def __init__(self, daemon, chunk: int, window: int, turn: int):
        self.d = daemon
        self.chunk, self.window, self.turn = chunk, window, turn
        self.running: dict[str, _Bulk] = {}
        self.dumpers: dict[str, Dumper] = {}

    def start(self, peer: str) -> None:
        """Answer a Dump action (a running bulk to the peer starts over)."""
        d, loop = self.d, asyncio.get_running_loop()
        self._stop_reading(peer)
        feed = RefreshFeed(self.chunk, self.window)
        feed.start([], open=True)
        b = self.running[peer] = _Bulk(d.sync, feed)
        d.sync.bulk_begin(peer, d.now())
        dumper = self.dumpers.get(peer)
        if dumper is None:
            dumper = self.dumpers[peer] = Dumper()
        try:
            dumper.start()
        except OSError as e:
            self._abort(peer, b, f"dump: {e}")
            return
        loop.add_reader(dumper.fileno(), self.on_dump, peer)

    def _stop_reading(self, peer: str) -> None:
        b = self.running.get(peer)
        if b is not None and b.reading:
            asyncio.get_running_loop().remove_reader(self.dumpers[peer].fileno())
            b.reading = False

    def _abort(self, peer: str, b: _Bulk, why: str) -> None:
        log.warning("bulk transfer to %s: %s (starting again)", peer, why)
        self._stop_reading(peer)
        del self.running[peer]
        b.sync.bulk_abort(peer, again=b.sync is self.d.sync)
        self.d.process()

    def _current(self, peer: str, b: _Bulk) -> bool:
        if b.sync is self.d.sync:
            return True
        # A reload replaced the core: its new sessions bring their own bulks.
        self._stop_reading(peer)
        del self.running[peer]
        b.sync.bulk_abort(peer, again=False)
        return False

    def on_dump(self, peer: str) -> None:
        b = self.running.get(peer)
        if b is None or not self._current(peer, b):
            return
        try:
            entries, done = self.dumpers[peer].read(self.turn)
        except ConntrackError as e:
            self._abort(peer, b, str(e))
            return
        own = self.d.own
        b.feed.add([(OP_UPSERT, e) for e in entries if syncable(e, own)])
        if done:
            self._stop_reading(peer)
            b.feed.end()
        if not b.soon:
            self.feed(peer)

    def feed(self, peer: str) -> None:
        """Hand the core the next chunk if the peer keeps up; end the bulk
        once the dump is read and sent."""
        b = self.running.get(peer)
        if b is None:
            return
        b.soon = False
        if not self._current(peer, b):
            return
        d, sync = self.d, b.sync
        chunk = b.feed.next_chunk(len(sync.peers[peer].tx.queue))
        if chunk:
            b.sent += sync.bulk_add(peer, [e for _op, e in chunk], d.now())
            d.process()
        if not b.feed.active:
            del self.running[peer]
            sync.bulk_end(peer, d.now())
            log.info("bulk transfer of %d entries to %s", b.sent, peer)
            d.process()
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


def start(daemon, peer: str) -> None:
    """process()'s answer to a Dump action."""
    b = daemon.__dict__.get("_bulks")
    if b is None:
        from syncd import daemon as shell     # its pacing constants (it imports us)
        b = daemon._bulks = Bulks(daemon, shell.REFRESH_CHUNK, shell.REFRESH_WINDOW,
                                  shell.DUMP_TURN)
    b.start(peer)


def wake(daemon) -> None:
    b = daemon.__dict__.get("_bulks")
    if b is not None and b.running:
        b.wake()
