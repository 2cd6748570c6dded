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
  and a lower source address in ucarp's order (`source_rank`; OpenBSD would
  flap). Hearing a worse master it re-announces the vip and advertises at
  once, so that after a split brain the neighbours' caches point at the
  winner; at most once per REANNOUNCE_GAP (`reannounce_due`), so a stream
  of forged worse adverts costs no stream of announcements. A MASTER that
  yields sends the winner one advert (unicast), so that the winner
  re-announces even when the split kept it from hearing our takeover.
* BACKUP hearing an advert: becomes MASTER on a bow-out advert (advbase =
  advskew = 255); or if the sender's demote is higher (regardless of
  preempt); or, with advbase > 0, if the sender's timing is longer than our
  master-down time (it would time out anyway); or if preempting and the
  sender's timing is worse and its demote the same, once it has been so
  for preempt_delay s (`preempt_held`). Otherwise it waits `master_wait`
  for the next advert.
* link down: INIT (vip released); link up: BACKUP, wait master-down.
* shutdown: a MASTER sends the bow-out advert and releases the vip.
* refresh: with garp_refresh > 0 a MASTER re-announces the vip with the
  first advert due at least garp_refresh s after its last announcement
  (`refresh_due`), as keepalived's vrrp_garp_master_refresh.

Each rule is one function below (`advert_interval`, `master_down_interval`,
`master_wait`, `yields_to`, `claims_from`, `preempt_held`, `source_rank`,
`refresh_due`); the machine, the
failover group (group.py), the benchmark and the docs use these.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
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
class AddressChanged:
    address: str | None  # this member's own address on the vip's segment


@dataclass(frozen=True)
class ContenderHeard:
    """An authentic advert for this vhid that cannot be taken yet (hardened:
    its sender has not proved it is live): someone else may be master."""


@dataclass(frozen=True)
class SiblingClaimed:
    """Another vip of the same failover group was claimed on `advert`."""
    advert: Advert
    source: str


@dataclass(frozen=True)
class Reconfigured:
    """A live reload changed this member's advskew or the preempt setting."""
    advskew: int
    preempt: bool
    preempt_delay: float = 0.0


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
    to: str | None = None  # unicast to this member only (None: the group / the peers)


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


Timing = tuple  # (advbase, advskew): compares as OpenBSD's timeval does


def advert_interval(advbase: int, advskew: int) -> float:
    """Seconds between a master's adverts."""
    t = advbase + advskew / 256
    return t if t > 0 else 1 / 256


def master_down_interval(advbase: int, advskew: int) -> float:
    """CARP's master-down time: how long a backup waits with no master heard."""
    t = 3 * advbase + advskew / 256
    return t if t > 0 else 3 / 256


def master_interval(heard: Advert, gaps: tuple = ()) -> float:
    """The advert interval of the master a backup hears: the one its advert
    states, except behind a demoted advert of advskew DEMOTED_SKEW. A
    demoted member advertises that skew while its timers keep its own (see
    the module doc), so there the real interval is anything up to the stated
    one: take the longer of the last two gaps between the master's adverts
    as they arrived (`gaps`; one early advert, sent at once on a demotion
    change, makes one short gap), never more than the stated interval, and
    the stated one until two gaps are known. Lost adverts make a gap
    longer, never shorter."""
    stated = advert_interval(heard.advbase, heard.advskew)
    if heard.demote and heard.advskew == DEMOTED_SKEW and len(gaps) >= 2:
        return min(stated, max(gaps[-2:]))
    return stated


def master_wait(advbase: int, advskew: int, heard: Advert | None, gaps: tuple = ()) -> float:
    """The one wait rule: how long a backup waits for the next advert of the
    master it last heard (`heard`, its adverts `gaps` apart as they arrived;
    None when it heard nobody yet).

    CARP's master-down can be shorter than the master's own advert interval
    (`master_interval`) when advbase is 0 and the master's skew is larger
    than ours: a member that yielded (demoted, in maintenance, or preempt
    off) would then claim the vips between two adverts of the new master,
    and flap. In that case wait three of the master's intervals, as VRRPv3
    does with the interval it learns from the master. Having heard no master
    yet (start, link up), assume the slowest one our advbase allows (advskew
    255): with advbase 0 a member then waits about 3 s before it claims,
    instead of claiming between two adverts of a master it has not heard
    yet; failover after hearing the master is not slowed. With advbase >= 1
    CARP's own time is already long enough."""
    own = master_down_interval(advbase, advskew)
    theirs = advert_interval(advbase, BOW_OUT) if heard is None else \
        master_interval(heard, gaps)
    if own < 1.5 * theirs:
        return 3 * theirs + advskew / 256
    return own


def source_rank(addr: str | None):
    """ucarp's tie-break order of source addresses (lower wins). ucarp
    compares the IPv4 address as stored (network byte order) read as a host
    integer, which on the little-endian machines it runs on is the packed
    address read little-endian. IPv6 (no ucarp peer) compares numerically."""
    try:
        a = ipaddress.ip_address(addr)
    except (TypeError, ValueError):
        return None
    if a.version == 4:
        return (4, int.from_bytes(a.packed, "little"))
    return (6, int(a))


def yields_to(ours: Timing, our_demote: int, ad: Advert, our_source: str | None,
              source: str) -> bool:
    """MASTER hearing `ad` from `source`: does it step down?"""
    theirs = (ad.advbase, ad.advskew)
    if ad.demote != our_demote:
        return ad.demote < our_demote
    if theirs != ours:
        return theirs < ours
    a, b = source_rank(source), source_rank(our_source)
    return a is not None and b is not None and a < b


def hears_from(peers: tuple, source: str) -> bool:
    """Unicast CARP (`vip.peers` listed): an advert counts only from a
    listed peer; anything else on the segment is dropped (`unlisted_source`).
    Multicast CARP (no list): any source."""
    if not peers:
        return True
    try:
        return str(ipaddress.ip_address(source.split("%", 1)[0])) in peers
    except ValueError:
        return False


REANNOUNCE_GAP = 1.0  # s: one split brain needs one answer, a flood gets no more


def reannounce_due(last: float | None, now: float) -> bool:
    """MASTER hearing a worse master: answer (announce, advertise at once)
    only if it has not within REANNOUNCE_GAP."""
    return last is None or now - last >= REANNOUNCE_GAP


PREEMPTING = "preempting"  # the reason claims_from gives for a preemption


def claims_from(ours: Timing, our_demote: int, preempt: bool, ad: Advert,
                source: str | None) -> str | None:
    """BACKUP hearing `ad` from its master: the reason to take over now, or
    None. A preemption (reason PREEMPTING ...) is the last reason looked
    for: it alone may be held back (preempt_held); a master that bows out,
    is demoted or is too slow is relieved at once."""
    theirs = (ad.advbase, ad.advskew)
    if theirs == (BOW_OUT, BOW_OUT):
        return f"{source} bowed out"
    if ad.demote > our_demote:
        return f"{source} is demoted ({ad.demote} > {our_demote})"
    # OpenBSD's guard: with advbase 0 a slower master is not "going to time
    # out" (its skew alone can exceed ours), and preempt = false must hold.
    if ours[0] and (3 * ours[0], ours[1]) < theirs:
        return f"{source} advertises slower than master-down"
    if preempt and ours < theirs and ad.demote >= our_demote:
        return f"{PREEMPTING} {source}"
    return None


def preempt_held(preempt_delay: float, better_since: float | None, now: float) -> bool:
    """BACKUP that claims_from would let preempt a healthy master: wait
    still? Only once it has been better than that master, without a break,
    for preempt_delay s (keepalived's and VyOS' preempt delay, counted from
    when it became better: after a start, a lifted demotion, a recovered
    track), so a member that comes and goes takes no traffic until it has
    stayed. It then claims at the master's next advert. `better_since` is
    when the current unbroken spell began (None: it begins now)."""
    return preempt_delay > 0 and (better_since is None or now - better_since < preempt_delay)


def refresh_due(garp_refresh: int, announced_at: float | None, now: float) -> bool:
    """MASTER sending an advert: re-announce the vip with it? Every
    garp_refresh s (0 = never), counted from the last announcement; riding
    on the advert timer keeps one timer per vhid, at the cost of up to one
    advert interval of lateness."""
    return garp_refresh > 0 and announced_at is not None and now - announced_at >= garp_refresh


class VhidMachine:
    # Re-announce on this many adverts after taking over (ucarp's delayed ARP,
    # for switches that missed the first one).
    REANNOUNCE_AFTER = 2

    def __init__(self, vhid: int, advbase: int, advskew: int, *, preempt: bool = True,
                 demotion: int = 0, own_address: str | None = None, garp_refresh: int = 0,
                 preempt_delay: float = 0.0):
        self.vhid = vhid
        self.preempt_delay = preempt_delay
        self.better_since: float | None = None  # BACKUP: since when it could preempt
        self.garp_refresh = garp_refresh
        self.announced_at: float | None = None  # MASTER: the last Announce
        self.advbase = advbase
        self.advskew = advskew
        self.preempt = preempt
        self.demotion = demotion
        self.own_address = own_address
        self.state = State.INIT
        self.master: str | None = None
        self.heard: Advert | None = None  # the master's last advert (BACKUP)
        self.heard_at: float | None = None  # when it arrived
        self.gaps: tuple = ()  # the last two gaps between the master's adverts
        self.transitions = 0
        self.deadline: float | None = None
        self.stopped = False
        self._reannounce = 0
        self._answered_worse: float | None = None  # when we last answered a worse master

    # --- timing -------------------------------------------------------------
    @property
    def wire_demote(self) -> int:
        return min(self.demotion, 255)

    @property
    def effective_skew(self) -> int:
        if self.demotion > 0 and self.advskew < DEMOTED_SKEW:
            return DEMOTED_SKEW
        return self.advskew

    @property
    def timing(self) -> Timing:
        """What this member advertises and compares with."""
        return (self.advbase, self.effective_skew)

    # Timers run on the configured advskew even while demoted: with advbase 0
    # two members demoted alike would otherwise both use 240/256 s for the
    # advert interval and the master-down time, and flap.
    @property
    def advert_interval(self) -> float:
        return advert_interval(self.advbase, self.advskew)

    @property
    def master_down_interval(self) -> float:
        return master_down_interval(self.advbase, self.advskew)

    def current_advert(self) -> SendAdvert | None:
        """The advert a MASTER sends now (what a proof of liveness carries);
        None in any other state: only a master has one to prove."""
        if self.state != State.MASTER:
            return None
        return SendAdvert(self.vhid, self.advbase, self.effective_skew, self.wire_demote)

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
        if isinstance(event, AddressChanged):
            self.own_address = event.address
            return []
        if isinstance(event, ContenderHeard):
            return self._assert_master(now) if self.state == State.MASTER else []
        if isinstance(event, SiblingClaimed):
            return self._sibling_claimed(event, now)
        if isinstance(event, Reconfigured):
            return self._reconfigured(event, now)
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
        self.better_since = None
        self.transitions += 1
        return RoleChanged(self.vhid, old, new, reason)

    def _become_master(self, now: float, reason: str) -> list:
        self.master, self.heard = self.own_address, None
        self._reannounce = self.REANNOUNCE_AFTER
        self.announced_at = now
        change = self._set(State.MASTER, reason)
        return [AddVip(self.vhid), *self._advert_now(now), Announce(self.vhid), change]

    def _wait_for_master(self, now: float, master: str | None, heard: Advert | None) -> ArmTimer:
        self.master, self.heard = master, heard
        return self._arm(now + master_wait(self.advbase, self.advskew, heard, self.gaps))

    def _heard_at(self, source: str, now: float) -> None:
        """An advert of `source` arrived: the gap since the last one, if
        it is the master we wait for (a new master starts afresh)."""
        if source == self.master and self.heard_at is not None:
            self.gaps = (*self.gaps[-1:], now - self.heard_at)
        else:
            self.gaps = ()
        self.heard_at = now

    def _become_backup(self, now: float, reason: str, master: str | None,
                       heard: Advert | None) -> list:
        out = [RemoveVip(self.vhid)] if self.state == State.MASTER else []
        change = self._set(State.BACKUP, reason)
        return out + [self._wait_for_master(now, master, heard), change]

    # --- event handlers -----------------------------------------------------
    def _advert(self, ad: Advert, source: str, now: float) -> list:
        if ad.vhid != self.vhid:
            return []
        if self.state == State.MASTER:
            if yields_to(self.timing, self.wire_demote, ad, self.own_address, source):
                self._heard_at(source, now)
                return [*self._become_backup(now, f"better master {source}", source, ad),
                        self._tell_winner(source)]
            return self._assert_master(now)
        if self.state == State.BACKUP:
            why = claims_from(self.timing, self.wire_demote, self.preempt, ad, source)
            if why is not None and why.startswith(PREEMPTING):
                if preempt_held(self.preempt_delay, self.better_since, now):
                    self.better_since = self.better_since if self.better_since is not None else now
                    why = None
                else:
                    why += f" (better for {self.preempt_delay:g} s)" if self.preempt_delay else ""
            else:
                self.better_since = None  # a break: the next spell counts afresh
            if why is not None:
                return self._become_master(now, why)
            self._heard_at(source, now)
            return [self._wait_for_master(now, source, ad)]
        return []  # INIT: not listening

    def _tell_winner(self, winner: str) -> SendAdvert:
        """Yielding: one advert of ours, unicast to the winner. It may not
        have heard us as master (a split brain that just healed: our
        takeover adverts went out while it was cut off), yet our GARPs
        turned the neighbours to us; hearing a worse master it re-announces
        (`_assert_master`), and the neighbours come back to it at once
        instead of at its next garp_refresh (never, by default)."""
        return SendAdvert(self.vhid, self.advbase, self.effective_skew, self.wire_demote, to=winner)

    def _assert_master(self, now: float) -> list:
        """Another master on our vhid (a worse one, or one whose adverts we
        cannot take yet): make it hear us and make the segment learn us, and
        once more REANNOUNCE_AFTER adverts after the last one heard (counted
        even while answers are limited): its own delayed re-announce, or
        the GARPs of its takeover, may reach the neighbours after it yields
        and turn them back to it (a healed split brain)."""
        self._reannounce = self.REANNOUNCE_AFTER
        if not reannounce_due(self._answered_worse, now):
            return []
        self._answered_worse = now
        self.announced_at = now
        return [Announce(self.vhid), *self._advert_now(now)]

    def _sibling_claimed(self, event: SiblingClaimed, now: float) -> list:
        """Another vip of this member's failover group was just claimed on
        an advert: apply the same rules now to our own master's last advert
        (or, if we have heard none yet, to that one: the members advertise
        every vip alike), rather than one advert interval later (group.py).
        A member's demotion is one figure for all its vips, and the deciding
        advert carries its latest: a master that lost its link on our
        segment can only say so on the others, and its last advert here
        still shows the old figure."""
        if self.state != State.BACKUP:
            return []
        heard, source = (self.heard, self.master) if self.heard is not None else \
            (event.advert, event.source)
        if event.advert.demote > heard.demote:
            heard = replace(heard, demote=event.advert.demote)
        why = claims_from(self.timing, self.wire_demote, self.preempt, heard, source)
        if why is None:
            return []
        return self._become_master(now, f"{why} (with its failover group)")

    def _reconfigured(self, event: Reconfigured, now: float) -> list:
        """New advskew or preempt, role kept: a master tells the peers at
        once (they compare with the new timing), a backup re-arms its wait."""
        self.preempt_delay = event.preempt_delay
        if (event.advskew, event.preempt) == (self.advskew, self.preempt):
            return []
        self.advskew, self.preempt = event.advskew, event.preempt
        if self.state == State.MASTER:
            return self._advert_now(now)
        if self.state == State.BACKUP:
            return [self._wait_for_master(now, self.master, self.heard)]
        return []

    def _timer(self, at: float, now: float) -> list:
        if self.deadline is None or at != self.deadline:
            return []  # stale
        if self.state == State.BACKUP:
            return self._become_master(now, "master down timer expired")
        if self.state == State.MASTER:
            out = self._advert_now(now)
            again = False
            if self._reannounce:
                self._reannounce -= 1
                again = self._reannounce == 0
            if again or refresh_due(self.garp_refresh, self.announced_at, now):
                self.announced_at = now
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
            return self._become_backup(now, "link up", None, None)
        if not up and self.state != State.INIT:
            out = [RemoveVip(self.vhid)] if self.state == State.MASTER else []
            self.master, self.heard = None, None
            return out + [self._arm(None), self._set(State.INIT, "link down")]
        return []

    def _shutdown(self) -> list:
        self.stopped = True
        out = []
        if self.state == State.MASTER:
            out += [SendAdvert(self.vhid, BOW_OUT, BOW_OUT, self.wire_demote), RemoveVip(self.vhid)]
        out.append(self._arm(None))
        if self.state != State.INIT:
            self.master, self.heard = None, None
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


# The election rules, in the order docs/carp-rules.md gives them.
RULES = (advert_interval, master_down_interval, master_interval, master_wait, yields_to, claims_from,
         reannounce_due, hears_from, preempt_held, source_rank, refresh_due)
