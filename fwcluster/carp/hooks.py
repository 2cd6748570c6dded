"""Role hooks: the executables in [hooks] directory, run on every role
change of the failover group (fwcluster.carp.core.hookevent decides when).

A transition never waits for a hook: carpd queues the event and goes on;
one worker runs the queued events in order, each event's hooks in lexical
order, one at a time, each killed after [hooks] timeout. So a slow hook
delays only later hooks, never a vip, and hooks see transitions in the
order they happened. The queue is bounded: when it is full the oldest
waiting event is dropped (logged), since what a hook must reach is the
latest role. Each hook's output goes to carpd's log (the journal) line by line.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Callable

from fwcluster.carp.core import hookevent
from fwcluster.carp.children import run_bounded
from fwcluster.core.config import Hooks

log = logging.getLogger("carpd.hooks")

QUEUE_BOUND = 16


def hooks_in(directory: str) -> list[str]:
    """The hooks to run, in lexical order; a missing directory has none."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warning("hooks directory %s: %s", directory, e)
        return []
    return [e.path for e in entries if hookevent.runnable(e.name) and e.is_file()
            and os.access(e.path, os.X_OK)]


class HookRunner:
    def __init__(self, config: Callable[[], Hooks]):
        self.config = config  # read at each event: a reload applies to the next one
        self.queue: asyncio.Queue = asyncio.Queue()
        self.dropped = 0
        self.runs = 0
        self.failures = 0

    def transition(self, ev: dict) -> None:
        """Queue an event; never blocks."""
        if self.queue.qsize() >= QUEUE_BOUND:
            old = self.queue.get_nowait()
            self.queue.task_done()
            self.dropped += 1
            log.warning("hooks: queue full, dropped the %s -> %s event of %s", old["old"],
                        old["new"], old["group"])
        self.queue.put_nowait(ev)

    async def run(self) -> None:
        while True:
            ev = await self.queue.get()
            try:
                cfg = self.config()
                for hook in hooks_in(cfg.directory):
                    await self._run_one(hook, ev, cfg.timeout)
            except Exception:
                log.exception("hooks for %s", ev)
            finally:
                self.queue.task_done()

    async def drain(self, limit: float) -> None:
        """Let queued hooks run (at shutdown), for at most `limit` seconds."""
        try:
            await asyncio.wait_for(self.queue.join(), limit)
        except asyncio.TimeoutError:
            log.warning("hooks still running after %g s at shutdown", limit)

    async def _run_one(self, hook: str, ev: dict, timeout: int) -> None:
        name = os.path.basename(hook)
        self.runs += 1
        try:
            status, out = await run_bounded(hookevent.argv(hook, ev), timeout, None,
                                            stdin=json.dumps(ev).encode() + b"\n")
        except OSError as e:
            self.failures += 1
            log.warning("hook %s: cannot run: %s", name, e)
            return
        for line in out.decode(errors="replace").splitlines():
            log.info("hook %s: %s", name, line)
        if status != 0:
            self.failures += 1
            log.warning("hook %s (%s -> %s): %s", name, ev["old"], ev["new"],
                        f"killed after {timeout} s" if status is None else f"exit status {status}")
