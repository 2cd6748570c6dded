"""A whole-table refresh sent in chunks between live events (pure).

Sending a dump of 100k entries at once puts every live event read after it
behind 100k records on the stream, seconds of lag for new sessions (the
window a failover loses). So the shell hands the refresh out a chunk at a
time, only while the peers have acknowledged all but `window` messages: a
live event then waits behind at most that much. A dump entry whose key a
live event touched since the dump began is dropped: the event carried newer
state (a DESTROY included) and the old copy must not overwrite it. The dump
itself may arrive in pieces (open: add() more, end() when it is complete).

Records are wire records and keys their record keys (digest.record_key):
the live path has events as records already and touches them without
decoding one. A feed nobody touches (a bulk transfer: the core drops a
touched key's copy itself) may hold anything.
"""
from __future__ import annotations

from syncd.core.digest import record_key


class RefreshFeed:
    def __init__(self, chunk: int = 512, window: int = 64):
        self.defaults = chunk, window
        self.chunk, self.window = chunk, window
        self.left: list = []        # records still to send, in dump order
        self.pos = 0
        self.touched: set = set()
        self.open = False           # more of the dump is to come

    @property
    def pending(self) -> bool:
        """Records are waiting to be sent."""
        return self.pos < len(self.left)

    @property
    def active(self) -> bool:
        return self.pending or self.open

    def start(self, records: list, replace: bool = True, open: bool = False,
              pace: tuple[int, int] | None = None) -> bool:
        """Begin a refresh of records; a running one is replaced by a newer
        dump only with replace (a full refresh covers a partial one). False:
        a refresh was running and is kept. pace: (chunk, window) for this
        refresh instead of the defaults (a background one goes gentler)."""
        if self.active and not replace:
            return False
        self.left, self.pos, self.touched, self.open = list(records), 0, set(), open
        self.chunk, self.window = pace or self.defaults
        return True

    def add(self, records) -> None:
        """More of an open dump."""
        if self.pos == len(self.left):     # all sent: let the memory go
            self.left, self.pos = [], 0
        self.left.extend(records)

    def end(self) -> None:
        """The dump is complete (or failed: what came is still sent)."""
        self.open = False
        self._done_if_empty()

    def _done_if_empty(self) -> None:
        if not self.active:
            self.left, self.pos, self.touched = [], 0, set()

    def touch(self, keys) -> None:
        """Record keys of live changes since the dump (sent or applied)."""
        if self.active:
            self.touched.update(keys)

    def next_chunk(self, backlog: int) -> list | None:
        """The next records to send (possibly empty: all were touched), or
        None while the peers' backlog (unacknowledged messages) is at the
        window or nothing is waiting."""
        if not self.pending or backlog >= self.window:
            return None
        end = min(self.pos + self.chunk, len(self.left))
        touched = self.touched
        out = self.left[self.pos:end]
        if touched:
            out = [r for r in out if record_key(r) not in touched]
        self.pos = end
        self._done_if_empty()
        return out
