"""Which sync link carries the stream to a peer (pure).

A member may have several sync links ([sync] interfaces, first
preferred). Datagrams are accepted on every link and ALIVEs go on every
link with carrier, so each link's liveness is known per peer; the data
(and acks, nacks, requests) go on one: the first link whose carrier is up
and which heard the peer lately. Moving changes only where datagrams go:
the stream (session, sequence numbers, resend queue) is the same, so no
bulk transfer follows a switch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

UP, SILENT, NO_CARRIER = "up", "silent", "no carrier"
# A link that heard nothing from the peer for this many ALIVE intervals
# "stops answering": an idle link carries an ALIVE each interval, so two
# missed in a row are loss, three a dead path. Below the protocol's
# peer_timeout (4 intervals by default), so data moves before a peer that
# only this link reached would be counted down.
SILENT_ALIVES = 3


def silent_after(alive: float) -> float:
    return SILENT_ALIVES * alive


def link_state(carrier: bool, heard: float | None, now: float, silent: float) -> str:
    """One link towards one peer: no carrier on our side, silent (nothing
    authentic from the peer on it within `silent`), or up."""
    if not carrier:
        return NO_CARRIER
    if heard is None or now - heard > silent:
        return SILENT
    return UP


def preferred(states: list[str], current: int) -> int:
    """The first link that is up; none up: the first with carrier if the
    current one has none, else stay (nothing better to move to, and moving
    would only lose what is in flight)."""
    for i, s in enumerate(states):
        if s == UP:
            return i
    if states[current] != NO_CARRIER:
        return current
    for i, s in enumerate(states):
        if s != NO_CARRIER:
            return i
    return current


@dataclass
class PeerLinks:
    """One peer's addresses, one per link (config order), and what each
    link last did: when it heard the peer, when we last sent on it."""
    addrs: tuple
    chosen: int = 0
    switches: int = 0
    heard: list = field(default_factory=list)
    sent: list = field(default_factory=list)

    def __post_init__(self):
        self.heard = [None] * len(self.addrs)
        self.sent = [float("-inf")] * len(self.addrs)

    def link_of(self, addr: str) -> int:
        return self.addrs.index(addr)

    def states(self, carrier: list[bool], now: float, silent: float) -> list[str]:
        return [link_state(carrier[i], self.heard[i], now, silent) for i in range(len(self.addrs))]

    def choose(self, carrier: list[bool], now: float, silent: float) -> bool:
        """Re-choose; True if the link changed."""
        new = preferred(self.states(carrier, now, silent), self.chosen)
        if new == self.chosen:
            return False
        self.chosen = new
        self.switches += 1
        return True

    def alive_due(self, carrier: list[bool], now: float, alive: float) -> list[int]:
        """Links with carrier that carried nothing to the peer for an ALIVE
        interval: each gets an ALIVE, so the peer hears every path."""
        return [i for i in range(len(self.addrs))
                if carrier[i] and now - self.sent[i] >= alive]

    def next_due(self, carrier: list[bool], now: float, alive: float, silent: float) -> float:
        """When these links next need the timer: an ALIVE due on a link with
        carrier, or a link that answers going silent (the stream may move)."""
        due = float("inf")
        for i in range(len(self.addrs)):
            if carrier[i]:
                due = min(due, self.sent[i] + alive)
                heard = self.heard[i]
                if heard is not None and now - heard <= silent:
                    due = min(due, heard + silent)
        return due
