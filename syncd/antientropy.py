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
from syncd.conntrack import ConntrackError, Dumper
from syncd.core.policy import syncable

log = logging.getLogger("syncd")
ROUND = "anti-entropy"
# Per loop turn, about 1 ms of CPU each (paced, syncd/pacing.py): dump
# entries read and checked, then ranges of the own set looked through for
# entries the dump did not show.
AE_TURN = pacing.BACKGROUND_TURN
AE_SWEEP = 4


class Rounds:
    """One round at a time; its dump socket is not the refreshes' (a refresh
    and a round must never share one: starting one abandons the other's)."""

    def __init__(self, daemon):
        self.d = daemon
        self.dumper: Dumper | None = None
        self.done: asyncio.Future | None = None
        self.sync = None

    @property
    def running(self) -> bool:
        return self.done is not None and not self.done.done()

    def start(self) -> asyncio.Future:
        """Begin a round (or join the running one); the future gets its figures."""
        if self.running:
            return self.done
        d = self.d
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.wall, self.cpu, self.dump_cpu, self.longest = time.monotonic(), time.process_time(), 0.0, 0.0
        self.turns = 0
        self.sync = sync = d.sync   # it adopts what this member forwards (set_forwarding)
        if self.dumper is None:
            self.dumper = Dumper()
        sync.anti_entropy_begin(d.now())
        try:
            self.dumper.start()
        except OSError as e:
            self._end({"error": str(e)})
            return self.done
        loop.add_reader(self.dumper.fileno(), self.on_dump)
        return self.done

    def on_dump(self) -> None:
        t0 = time.process_time()
        d, sync = self.d, self.sync
        if d.sync is not sync:       # a reload replaced the core: this round is void
            self._end({"error": "reloaded during the round"})
            return
        try:
            entries, done = self.dumper.read(AE_TURN)
        except ConntrackError as e:   # interrupted (the table changed under it): next round
            self._end({"error": str(e)})
            return
        t1 = time.process_time()
        self.dump_cpu += t1 - t0
        own = d.own
        sync.anti_entropy_add([e for e in entries if syncable(e, own)], d.now())
        self.turns += 1
        self.longest = max(self.longest, time.process_time() - t0)
        # Routine work: the next turn after a pause (syncd/pacing.py).
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.dumper.fileno())
        if done:
            loop.call_later(pacing.pause(t0), self.sweep)
        else:
            loop.call_later(pacing.pause(t0), self._resume, sync)

    def _resume(self, sync) -> None:
        if self.running and self.sync is sync:
            asyncio.get_running_loop().add_reader(self.dumper.fileno(), self.on_dump)

    def sweep(self) -> None:
        """The own set looked through a few ranges per turn, then the end."""
        t0 = time.process_time()
        d, sync = self.d, self.sync
        if not self.running:         # ended meanwhile (a reload, a failed dump)
            return
        if d.sync is not sync:
            self._end({"error": "reloaded during the round"})
            return
        self.turns += 1
        if not sync.anti_entropy_sweep(AE_SWEEP):
            self.longest = max(self.longest, time.process_time() - t0)
            asyncio.get_running_loop().call_later(pacing.pause(t0), self.sweep)
            return
        fixes = sync.anti_entropy_finish(d.now())
        d.process()
        self.longest = max(self.longest, time.process_time() - t0)
        self._end({"round": sync.round, "entries": sync.ae_entries, "own": len(sync.own),
                   "corrections": fixes, "corrections_total": sync.corrections,
                   "dump_cpu_s": round(self.dump_cpu, 4),
                   "cpu_s": round(time.process_time() - self.cpu, 4),
                   "wall_s": round(time.monotonic() - self.wall, 4),
                   "turns": self.turns, "longest_turn_cpu_s": round(self.longest, 4)})
        if fixes:
            log.warning("anti-entropy: %d own entries corrected from the kernel table "
                        "(lost conntrack events)", fixes)

    def _end(self, figures: dict) -> None:
        if "error" in figures:
            log.warning("anti-entropy: %s", figures["error"])
            self.sync.anti_entropy_abort()
        if self.dumper is not None:
            asyncio.get_running_loop().remove_reader(self.dumper.fileno())
        self.d.anti_entropy = figures
        self.done.set_result(figures)


def rounds(daemon) -> Rounds:
    r = daemon.__dict__.get("_ae_rounds")
    if r is None:
        r = daemon._ae_rounds = Rounds(daemon)
    return r


def start_round(daemon) -> asyncio.Future:
    """Housekeeping: a round in the background (a running one goes on)."""
    return rounds(daemon).start()


async def run_round(daemon) -> dict:
    """The control request: the figures of a round begun after it (a
    running one may have read past what the caller just changed)."""
    r = rounds(daemon)
    if r.running:
        await r.done
    return await r.start()
