"""CARP state machine for one vhid (pure: events in, actions out, time passed in).

Semantics follow OpenBSD's ip_carp.c, with ucarp's tie-break:

* advert interval   advbase + advskew/256 s (1/256 s if that is 0)
* master-down time  3 * advbase + advskew/256 s (3/256 s if that is 0)
* one advert's "timing" is (advbase, advskew); a lower timing is better.
* demote: the sum of this member's demotion sources (clamped to 255 on the
  wire). A lower demote beats any timing. While demoted, a member advertises
  and compares with advskew 240 if its own is lower, as OpenBSD 4.x did, so
  that peers which ignore the demote byte (ucarp) also prefer the other
  member; its timers keep the configured advskew.
* MASTER hearing an advert: goes BACKUP if the sender has a lower demote, or
  an equal demote and a better timing, or an equal demote and equal timing
  and a lower source address (ucarp's tie-break; OpenBSD would flap).
  Hearing a worse master it re-announces the vip and advertises at once, so
  that after a split brain the neighbours' caches point at the winner.
* BACKUP hearing an advert: becomes MASTER if preempting and the sender's
  timing is worse and its demote not lower; or if the sender's demote is
  higher (regardless of preempt); or if the sender's timing is longer than our
  master-down time (it would time out anyway; this is also how a bow-out
  advert, advbase = advskew = 255, makes the backup take over at once).
  Otherwise the master-down timer restarts.
* link down: INIT (vip released); link up: BACKUP, wait master-down.
* shutdown: a MASTER sends the bow-out advert and releases the vip.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

from fwcluster.carp.core.wire import BOW_OUT, Advert

DEMOTED_SKEW = 240


class State(str, Enum):
    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"


# --- events -----------------------------------------------------------------
@dataclass(frozen=True)
class AdvertReceived:
    advert: Advert
    source: str  # IP address the advert came from


@dataclass(frozen=True)
class TimerFired:
    at: float  # the deadline the timer was armed for (stale ones are ignored)


@dataclass(frozen=True)
class DemotionChanged:
    total: int


@dataclass(frozen=True)
class LinkChanged:
    up: bool


@dataclass(frozen=True)
class Shutdown:
    pass


# --- actions ----------------------------------------------------------------
@dataclass(frozen=True)
class SendAdvert:
    vhid: int
    advbase: int
    advskew: int
    demote: int


@dataclass(frozen=True)
class AddVip:
    vhid: int


@dataclass(frozen=True)
class RemoveVip:
    vhid: int


@dataclass(frozen=True)
class Announce:
    """Gratuitous ARP (IPv4) or unsolicited neighbour advertisement (IPv6)."""
    vhid: int


@dataclass(frozen=True)
class ArmTimer:
    vhid: int
    at: float | None  # absolute time on the caller's clock; None cancels


@dataclass(frozen=True)
class RoleChanged:
    vhid: int
    old: State
    new: State
    reason: str


def _tv(advbase: int, advskew: int) -> tuple[int, int]:
    """Timing as a comparable pair (seconds, 1/256 s), like OpenBSD's timeval."""
    return (advbase, advskew)


def _source_key(addr: str | None):
    try:
        a = ipaddress.ip_address(addr)
        return (a.version, int(a))
    except (TypeError, ValueError):
        return None


class VhidMachine:
    # Re-announce on this many adverts after taking over (ucarp's delayed ARP,
    # for switches that missed the first one).
    REANNOUNCE_AFTER = 2

    def __init__(self, vhid: int, advbase: int, advskew: int, *, preempt: bool = True,
                 demotion: int = 0, own_address: str | None = None):
        self.vhid = vhid
        self.advbase = advbase
        self.advskew = advskew
        self.preempt = preempt
        self.demotion = demotion
        self.own_address = own_address
        self.state = State.INIT
        self.master: str | None = None
        self.transitions = 0
        self.deadline: float | None = None
        self.stopped = False
        self._reannounce = 0

    # --- timing -------------------------------------------------------------
    @property
    def wire_demote(self) -> int:
        return min(self.demotion, 255)

    @property
    def effective_skew(self) -> int:
        if self.demotion > 0 and self.advskew < DEMOTED_SKEW:
            return DEMOTED_SKEW
        return self.advskew

    # Timers run on the configured advskew even while demoted: with advbase 0
    # two members demoted alike would otherwise both use 240/256 s for the
    # advert interval and the master-down time, and flap.
    @property
    def advert_interval(self) -> float:
        t = self.advbase + self.advskew / 256
        return t if t > 0 else 1 / 256

    @property
    def master_down_interval(self) -> float:
        t = 3 * self.advbase + self.advskew / 256
        return t if t > 0 else 3 / 256

    # --- entry point --------------------------------------------------------
    def handle(self, event, now: float) -> list:
        if self.stopped:
            return []
        if isinstance(event, AdvertReceived):
            return self._advert(event.advert, event.source, now)
        if isinstance(event, TimerFired):
            return self._timer(event.at, now)
        if isinstance(event, DemotionChanged):
            return self._demotion(event.total, now)
        if isinstance(event, LinkChanged):
            return self._link(event.up, now)
        if isinstance(event, Shutdown):
            return self._shutdown()
        raise TypeError(f"unknown event {event!r}")

    # --- helpers ------------------------------------------------------------
    def _arm(self, at: float | None) -> ArmTimer:
        self.deadline = at
        return ArmTimer(self.vhid, at)

    def _advert_now(self, now: float) -> list:
        return [SendAdvert(self.vhid, self.advbase, self.effective_skew, self.wire_demote),
                self._arm(now + self.advert_interval)]

    def _set(self, new: State, reason: str) -> RoleChanged:
        old, self.state = self.state, new
        self.transitions += 1
        return RoleChanged(self.vhid, old, new, reason)

    def _become_master(self, now: float, reason: str) -> list:
        self.master = self.own_address
        self._reannounce = self.REANNOUNCE_AFTER
        change = self._set(State.MASTER, reason)
        return [AddVip(self.vhid), *self._advert_now(now), Announce(self.vhid), change]

    def _become_backup(self, now: float, reason: str, master: str | None) -> list:
        was_master = self.state == State.MASTER
        self.master = master
        change = self._set(State.BACKUP, reason)
        out = [RemoveVip(self.vhid)] if was_master else []
        return out + [self._arm(now + self.master_down_interval), change]

    # --- event handlers -----------------------------------------------------
    def _advert(self, ad: Advert, source: str, now: float) -> list:
        if ad.vhid != self.vhid:
            return []
        ours = _tv(self.advbase, self.effective_skew)
        theirs = _tv(ad.advbase, ad.advskew)
        mine = self.wire_demote
        if self.state == State.MASTER:
            if ad.demote < mine or (ad.demote == mine and (
                    theirs < ours or (theirs == ours and self._lower_source(source)))):
                return self._become_backup(now, f"better master {source}", source)
            # A worse master: make it hear us and make the segment learn us.
            return [Announce(self.vhid), *self._advert_now(now)]
        if self.state == State.BACKUP:
            if self.preempt and ours < theirs and ad.demote >= mine:
                return self._become_master(now, f"preempting {source}")
            if ad.demote > mine:
                return self._become_master(now, f"{source} is demoted ({ad.demote} > {mine})")
            if (3 * self.advbase, self.effective_skew) < theirs:
                why = "bowed out" if (ad.advbase, ad.advskew) == (BOW_OUT, BOW_OUT) else \
                    "advertises slower than master-down"
                return self._become_master(now, f"{source} {why}")
            self.master = source
            return [self._arm(now + self._master_down_after(ad))]
        return []  # INIT: not listening

    def _master_down_after(self, ad: Advert) -> float:
        """How long to wait for the next advert of a master we do not preempt.

        CARP's master-down (3 x advbase + advskew/256) can be shorter than the
        master's own advert interval when advbase is 0 and the master's skew is
        larger than ours: a demoted member (ordered takeover) or one with
        preempt off would then claim the vips between two adverts and flap.
        In that case wait three of the master's intervals, as VRRPv3 does
        with the interval it learns from the master.
        """
        own = self.master_down_interval
        theirs = ad.advbase + ad.advskew / 256
        if own < 1.5 * theirs:
            return 3 * theirs + self.advskew / 256
        return own

    def _lower_source(self, source: str) -> bool:
        theirs, ours = _source_key(source), _source_key(self.own_address)
        return theirs is not None and ours is not None and theirs < ours

    def _timer(self, at: float, now: float) -> list:
        if self.deadline is None or at != self.deadline:
            return []  # stale
        if self.state == State.BACKUP:
            return self._become_master(now, "master down timer expired")
        if self.state == State.MASTER:
            out = self._advert_now(now)
            if self._reannounce:
                self._reannounce -= 1
                if self._reannounce == 0:
                    out.append(Announce(self.vhid))
            return out
        return []

    def _demotion(self, total: int, now: float) -> list:
        if total == self.demotion:
            return []
        self.demotion = total
        if self.state == State.MASTER:
            # Tell the peers at once, so a demoted master is relieved quickly.
            return self._advert_now(now)
        return []

    def _link(self, up: bool, now: float) -> list:
        if up and self.state == State.INIT:
            return self._become_backup(now, "link up", None)
        if not up and self.state != State.INIT:
            out = [RemoveVip(self.vhid)] if self.state == State.MASTER else []
            self.master = None
            return out + [self._arm(None), self._set(State.INIT, "link down")]
        return []

    def _shutdown(self) -> list:
        self.stopped = True
        out = []
        if self.state == State.MASTER:
            out += [SendAdvert(self.vhid, BOW_OUT, BOW_OUT, self.wire_demote), RemoveVip(self.vhid)]
        out.append(self._arm(None))
        if self.state != State.INIT:
            self.master = None
            out.append(self._set(State.INIT, "shutdown"))
        return out


class Demotion:
    """Named demotion sources of the member; the total is their sum."""

    def __init__(self):
        self.sources: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.sources.values())

    def set(self, source: str, value: int) -> int:
        if value < 0:
            raise ValueError("demotion must not be negative")
        if value:
            self.sources[source] = value
        else:
            self.sources.pop(source, None)
        return self.total
