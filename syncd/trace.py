"""Latency trace of syncd's hot path: a debug/profiling mode, off by default.

SYNCD_TRACE=/dir/prefix makes the daemon stamp, with time.monotonic() (one
clock for every network namespace of a host), each batch of kernel events
it sends and each batch of datagrams it applies, per step, and each garbage
collection (start, duration, generation), and write the
stamps to /dir/prefix-NODE.json when it stops. SYNCD_PROFILE=/dir/prefix
writes a cProfile of the run to /dir/prefix-NODE.prof the same way.
`python -m bench.sync --trace` joins the stamps with the injector's and the
watcher's into the per-step breakdown of docs/perf/sync.md.

Off (the default) the daemon pays one `is None` test per batch.
"""
from __future__ import annotations

import cProfile
import gc
import json
import os
import time

from syncd.core import wire

MAX_BATCHES = 500_000    # bounded: a forgotten trace must not eat the memory


def _keys(records) -> list:
    # What bench/sync.py can match: the original tuple, the op, the mark.
    return [(e.osrc, e.osport, e.odport, op, e.mark) for op, e in records]


class Trace:
    def __init__(self, path: str):
        self.path = path
        self.sent: list = []       # (wake, read, encoded, sent, keys)
        self.applied: list = []    # (wake, recv_s, auth_s, received, kernel_start, applied, keys)
        self.pending: list = []    # records applied in the current datagram batch
        self.kernel_start = None
        self.gc: list = []         # (start, seconds, generation) of each collection
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.monotonic()
        elif len(self.gc) < MAX_BATCHES:
            self.gc.append((self._gc_start, time.monotonic() - self._gc_start, info["generation"]))

    @classmethod
    def from_env(cls, node: str) -> "Trace | None":
        prefix = os.environ.get("SYNCD_TRACE")
        return cls(f"{prefix}-{node}.json") if prefix else None

    def sent_batch(self, wake: float, read: float, encoded: float, sent: float, records) -> None:
        """records: the batch's wire records."""
        if len(self.sent) < MAX_BATCHES:
            self.sent.append((wake, read, encoded, sent,
                              _keys([wire.decode_record(r, 0)[:2] for r in records])))

    def applying(self, start: float, records) -> None:
        if self.kernel_start is None:
            self.kernel_start = start
        self.pending.extend(records)

    def applied_batch(self, wake: float, recv_s: float, auth_s: float, received: float,
                      applied: float) -> None:
        if self.pending and len(self.applied) < MAX_BATCHES:
            self.applied.append((wake, recv_s, auth_s, received, self.kernel_start, applied,
                                 _keys(self.pending)))
        self.pending = []
        self.kernel_start = None

    def write(self) -> None:
        with open(self.path, "w") as f:
            json.dump({"sent": self.sent, "applied": self.applied, "gc": self.gc}, f)


def profiler(node: str):
    """(profile, path) when SYNCD_PROFILE is set, else (None, None)."""
    prefix = os.environ.get("SYNCD_PROFILE")
    if not prefix:
        return None, None
    prof = cProfile.Profile()
    prof.enable()
    return prof, f"{prefix}-{node}.prof"
