"""Who may hold a config channel connection before it authenticates (pure).

The ruleset lets the sync link reach the channel by source address, and an
address is no proof of the key: anyone on the link with a member's address
can open connections and stay silent. So unauthenticated connections get a
budget of their own, apart from authenticated ones:

* at most `pending` of them, and at most `per_source` from one address;
* a newcomer always gets a slot: past either cap, the oldest unauthenticated
  connection (of its source, if that source is at its cap) is closed. A
  member's request follows the greeting by one round trip, so silent
  connections cannot keep it out unless they arrive faster than that;
* an authenticated connection leaves that budget for one of `authed` slots
  that only key holders can fill (the shell also gives each one a short
  deadline to authenticate in).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable


class Slots:
    def __init__(self, pending: int = 8, per_source: int = 4, authed: int = 8):
        self.pending_max, self.per_source, self.authed_max = pending, per_source, authed
        self.pending: OrderedDict[Hashable, str] = OrderedDict()  # conn -> source, oldest first
        self.authed: set[Hashable] = set()

    def arrive(self, conn: Hashable, source: str) -> list[Hashable]:
        """Admit conn (unauthenticated); the connections to close for it."""
        closed = []
        while (old := evictee(self.pending, source, self.per_source, self.pending_max)) is not None:
            del self.pending[old]
            closed.append(old)
        self.pending[conn] = source
        return closed

    def authenticated(self, conn: Hashable) -> bool:
        """conn proved the key: False if every authenticated slot is taken."""
        self.pending.pop(conn, None)
        if len(self.authed) >= self.authed_max:
            return False
        self.authed.add(conn)
        return True

    def leave(self, conn: Hashable) -> None:
        self.pending.pop(conn, None)
        self.authed.discard(conn)


def evictee(pending: OrderedDict, source: str, per_source: int, limit: int) -> Hashable | None:
    """The unauthenticated connection a newcomer from source displaces: the
    oldest of its source if that source is at its cap, else the oldest of
    all if all slots are taken, else none."""
    own = [c for c, s in pending.items() if s == source]
    if len(own) >= per_source:
        return own[0]
    if len(pending) >= limit:
        return next(iter(pending))
    return None
