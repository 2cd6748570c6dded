"""A dump of the kernel's conntrack table read a turn at a time, between
live events: the one reader behind every job that needs the whole table
(a refresh, a bulk transfer per peer, an anti-entropy round, fwctl
conntrack).

A blocking dump stalls syncd's loop (~0.4 s at 100k entries, and fwctl
conntrack filtered it in the same turn: ~1.4 s); beyond the peers' 2 s
timeout they even take the member for dead. Read here, a job gets `turn`
entries per loop turn on a netlink socket of its own (two jobs never
share one: starting a dump abandons the socket's previous one), and a
routine job (paced) waits after each turn as syncd/pacing.py says, so it
takes a bounded share of the CPU.

The loop is anything with asyncio's add_reader, remove_reader, call_soon
and call_later (the unit tests pass a fake one); the job sees its dump
only through two callbacks: on_piece(entries) per turn, on_end(error)
once (error None when the dump is complete). on_end never runs inside
start(), so a job that starts again on an error does not recurse.
"""
from __future__ import annotations

from typing import Callable, Protocol

from syncd import pacing
from syncd.conntrack import ConntrackError, Dumper
from syncd.core.policy import Filter
from syncd.core.protocol import Sync


class Host(Protocol):
    """What a job reading dumps needs of the daemon (syncd/bulk.py,
    antientropy.py): the current core (a reload replaces it), the member's
    own addresses and [sync] filter (policy.syncable), its clock and a way
    to carry out the core's actions (what the member forwards is the core's:
    set_forwarding)."""
    sync: Sync
    own: frozenset
    sync_filter: Filter

    def now(self) -> float: ...

    def process(self) -> None: ...


class PacedDump:
    def __init__(self, loop, on_piece: Callable[[list], None],
                 on_end: Callable[[str | None], None], turn: int, paced: bool,
                 dumper: Callable[[], Dumper] = Dumper):
        self.loop, self.on_piece, self.on_end = loop, on_piece, on_end
        self.turn, self.paced = turn, paced
        self._new_dumper = dumper
        self.dumper: Dumper | None = None     # opened at the first start, kept
        self.running = False
        self._reading = False
        self._later = None                    # the pending resume or end
        self._run = 0                         # which start() the callbacks belong to
        self.turns, self.read_cpu, self.longest = 0, 0.0, 0.0

    def start(self, turn: int | None = None, paced: bool | None = None) -> None:
        """Ask for a dump (a running one is abandoned); turn and paced for
        this dump only, if given."""
        self.abort()
        self.turn = turn or self.turn
        self.paced = self.paced if paced is None else paced
        self.turns, self.read_cpu, self.longest = 0, 0.0, 0.0
        self.running = True
        try:
            if self.dumper is None:
                self.dumper = self._new_dumper()
            self.dumper.start()
        except OSError as e:
            self._later = self.loop.call_soon(self._end, f"dump: {e}")
            return
        self._listen()

    def abort(self) -> None:
        """Stop reading (the job is gone or replaced): no more callbacks."""
        self._run += 1
        self.running = False
        self._unlisten()
        if self._later is not None:
            self._later.cancel()
            self._later = None

    def close(self) -> None:
        self.abort()
        if self.dumper is not None:
            self.dumper.close()
            self.dumper = None

    def _listen(self) -> None:
        self._later = None
        self.loop.add_reader(self.dumper.fileno(), self._read)
        self._reading = True

    def _unlisten(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.dumper.fileno())
            self._reading = False

    def _read(self) -> None:
        t0 = pacing.mark()
        try:
            entries, done = self.dumper.read(self.turn)
        except ConntrackError as e:    # interrupted (the table changed under it...)
            self._end(str(e))
            return
        self.read_cpu += pacing.mark() - t0
        run = self._run
        self.on_piece(entries)
        if run != self._run:           # the job aborted or restarted it
            return
        self.turns += 1
        self.longest = max(self.longest, pacing.mark() - t0)
        if not self.paced:             # the reader fires again at the next turn
            if done:
                self._end(None)
            return
        # Routine work: the next turn (or the end, the job's last step)
        # after a pause.
        self._unlisten()
        if done:
            self._later = self.loop.call_later(pacing.pause(t0), self._end, None)
        else:
            self._later = self.loop.call_later(pacing.pause(t0), self._listen)

    def _end(self, error: str | None) -> None:
        self.abort()
        self.on_end(error)
