"""Anti-entropy rounds of the running daemon (the logic is the pure core's:
protocol.Sync.anti_entropy_begin/_add/_finish, digest.py): read the kernel
table on a dump socket of its own, AE_TURN entries per loop turn, into the
core, then let it correct its own entries and send digests; keep the cost.

A blocking dump and one whole round in a single loop turn stalled the event
stream for ~0.25 s at 30k entries and ~1 s at 100k, every digest_interval.
Read a turn at a time, live events go on between two reads; the core leaves
out of its corrections every entry a live event touched meanwhile.

Runs every [sync] digest_interval seconds (housekeeping) and on the control
request {"cmd": "anti-entropy"} (tests, operators after an incident), which
waits for the running round to end, runs one more and returns its figures.
"""
from __future__ import annotations

import asyncio
import logging
import time

from syncd import pacing
from syncd.core.policy import syncable
from syncd.dumps import Host, PacedDump

log = logging.getLogger("syncd")
ROUND = "anti-entropy"
# Per loop turn, about 1 ms of CPU each (paced, syncd/pacing.py): dump
# entries read and checked, then ranges of the own set looked through for
# entries the dump did not show.
AE_TURN = pacing.BACKGROUND_TURN
AE_SWEEP = 4


class Rounds:
    """One round at a time, on a dump socket of its own (syncd/dumps.py).
    `last` holds the figures of the last round (status: anti_entropy)."""

    def __init__(self, host: Host):
        self.host = host
        self.dump: PacedDump | None = None
        self.done: asyncio.Future | None = None
        self.sync = None
        self.last: dict | None = None

    @property
    def running(self) -> bool:
        return self.done is not None and not self.done.done()

    def start(self) -> asyncio.Future:
        """Begin a round (or join the running one); the future gets its figures."""
        if self.running:
            return self.done
        h = self.host
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.wall, self.cpu, self.longest = time.monotonic(), time.process_time(), 0.0
        self.turns_swept = 0
        self.sync = sync = h.sync   # it adopts what this member forwards (set_forwarding)
        if self.dump is None:
            self.dump = PacedDump(loop, self.on_piece, self.on_dump_end, AE_TURN, paced=True)
        sync.anti_entropy_begin(h.now())
        self.dump.start()
        return self.done

    def close(self) -> None:
        if self.dump is not None:
            self.dump.close()

    def _reloaded(self) -> bool:
        if self.host.sync is self.sync:
            return False
        self._end({"error": "reloaded during the round"})    # this round is void
        return True

    def on_piece(self, entries: list) -> None:
        if self._reloaded():
            return
        own, flt = self.host.own, self.host.sync_filter
        self.sync.anti_entropy_add([e for e in entries if syncable(e, own, flt)], self.host.now())

    def on_dump_end(self, error: str | None) -> None:
        if error is not None:       # interrupted (the table changed under it): next round
            self._end({"error": error})
        else:
            self.sweep()            # after the pause that followed the last read

    def sweep(self) -> None:
        """The own set looked through a few ranges per turn, then the end."""
        t0 = time.process_time()
        h, sync = self.host, self.sync
        if not self.running or self._reloaded():   # ended meanwhile (a reload, a failed dump)
            return
        self.turns_swept += 1
        if not sync.anti_entropy_sweep(AE_SWEEP):
            self.longest = max(self.longest, time.process_time() - t0)
            asyncio.get_running_loop().call_later(pacing.pause(t0), self.sweep)
            return
        fixes = sync.anti_entropy_finish(h.now())
        h.process()
        self.longest = max(self.longest, time.process_time() - t0, self.dump.longest)
        self._end({"round": sync.round, "entries": sync.ae_entries, "own": len(sync.own),
                   "corrections": fixes, "corrections_total": sync.corrections,
                   "dump_cpu_s": round(self.dump.read_cpu, 4),
                   "cpu_s": round(time.process_time() - self.cpu, 4),
                   "wall_s": round(time.monotonic() - self.wall, 4),
                   "turns": self.dump.turns + self.turns_swept,
                   "longest_turn_cpu_s": round(self.longest, 4)})
        if fixes:
            log.warning("anti-entropy: %d own entries corrected from the kernel table "
                        "(lost conntrack events)", fixes)

    def _end(self, figures: dict) -> None:
        if "error" in figures:
            log.warning("anti-entropy: %s", figures["error"])
            self.sync.anti_entropy_abort()
        self.dump.abort()
        self.last = figures
        self.done.set_result(figures)

    async def run(self) -> dict:
        """The control request: the figures of a round begun after it (a
        running one may have read past what the caller just changed)."""
        if self.running:
            await self.done
        return await self.start()
