"""Reliable state-sync protocol between cluster members (pure, sans-I/O).

In the spirit of conntrackd's FTFW mode, one reliable stream per ordered pair
of members (unicast, so it works for any number of members):

* the sender numbers DATA messages (gen, dseq) and keeps them in a resend
  queue until the receiver acknowledges them (cumulative ACK);
* the receiver delivers strictly in order, buffers what arrives early and
  asks for the gap with a NACK; the sender resends from its queue, or, if the
  messages are gone (queue overflow), starts a new generation with a full
  bulk transfer;
* ALIVE messages carry the last dseq sent, so a lost tail is noticed, and
  tell that a peer is up;
* a starting member sends RESYNC_REQ to every peer; each peer answers with a
  bulk transfer of its table followed by RESYNC_DONE. When every peer has
  answered (or has stayed silent for `absent_after` while carpd hears no
  master advert: contract.peer_absent), the member is in sync
  and may claim the vips (ordered takeover).

Every message is authenticated (wire.py) and bound to the receiver: each
member picks, per peer, a random session nonce for the stream it receives
from that peer and sends it in RESYNC_REQ; the peer echoes it in every
message it sends back. A receiver accepts only its current nonce, locks the
session to the sender's per-run id on the first message it accepts, and
checks a per-session replay window. A message that does not match makes the
receiver ask again (at most once per resync_retry), with a fresh nonce once
the old one was used. So a recording made in an earlier session never
applies, and no clock or stored state decides who is accepted: nobody can
be locked out (docs/sync.md, "Why a recording never applies").

Anti-entropy (digest.py): each member keeps the set of entries it
originated ("own": what it told its peers) and, per peer, the set that peer
told it ("view"). anti_entropy() checks the own set against the kernel's
table (repairing lost conntrack events) and sends a DIGEST of it per range
on each reliable stream; the receiver compares it, in stream order, with its
view, asks for the differing ranges (REPAIR_REQ) and gets their whole
contents (FLAG_OWN records, REPAIR_DONE): what it holds from that peer in
those ranges and was not in the contents is deleted. A view is dropped, not
deleted from the kernel, when the peer starts a new run: a crashed master's
flows now live on, carried by someone else.

Versions (docs/sync.md, "Versions and upgrades"): a member accepts every
wire version it speaks and sends each peer the newest both speak
(wire_versions, the one rule); a peer whose datagrams are of a version it
does not speak is "unintelligible", never absent (contract.peer_absent).

Nothing here does I/O: the shell feeds datagrams and local entries in, calls
tick() with the time, and drains actions out (Send, Apply, Dump, InSync).
"""
from __future__ import annotations

import ipaddress
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from fwcluster.core.config import wire_indexes
from fwcluster.core import contract
from syncd.core import digest, expect, links, wire
from syncd.core.digest import EntrySet, record_key
from syncd.core.ownership import ORIGIN, STANDBY, Forwarding, forwards, gained, yielded
from syncd.core.entry import OP_DELETE, OP_UPSERT
from syncd.core.replay import ReplayWindow


@dataclass(frozen=True)
class Timing:
    rto: float = 0.5              # resend an unacked message after this (NACKs repair faster)
    alive: float = 0.5            # idle interval between ALIVE messages
    peer_timeout: float = 2.0     # no valid message for this long: peer down
    resync_retry: float = 1.0     # repeat RESYNC_REQ until answered
    absent_after: float = 3.0     # a peer silent this long after start is absent
    max_queue: int = 20000        # messages kept for resend, per peer
    max_reorder: int = 4096       # early messages buffered, per peer
    # Keys of a peer's FLAG_OWN contents kept until its REPAIR_DONE or
    # RESYNC_DONE; past this the next REPAIR_DONE deletes nothing (the next
    # round repairs again) rather than memory growing with a stream of
    # contents whose end never comes.
    max_seen: int = 1 << 18
    resend_burst: int = 32        # timer resends per tick, per peer
    # Delayed ACKs: one per ack_every messages or once ack_delay has passed
    # (the next flush/tick after it), not one per datagram, which would wake
    # the sender as often as it sends. Far below rto, so never a resend.
    ack_delay: float = 0.02
    ack_every: int = 32


# --- actions for the I/O shell ------------------------------------------------
class Send(NamedTuple):
    addr: str
    data: bytes
    link: int = 0       # which sync link (socket) it leaves by (links.py)


class Apply(NamedTuple):
    peer: str
    records: tuple   # ((op, Entry), ...) in order
    replace: bool = False   # from a bulk transfer: replace local entries (see daemon)
    fix: bool = False       # anti-entropy: a repair or correction, not a stream event
    # Flows this member forwards (ownership.forwards): create what is
    # missing, never overwrite (our entry is the live one); no deletes.
    keep: bool = False


class Expect(NamedTuple):
    """A peer's expectations to create or end here ((op, expect.Expectation),
    ...; expect.OP_EXPECT or OP_UNEXPECT), in order."""
    peer: str
    records: tuple


class Dump(NamedTuple):
    """Dump the local table and hand it to Sync.bulk(peer, entries, now), or
    in pieces (bulk_begin, bulk_add, bulk_end) between live events."""
    peer: str


class InSync(NamedTuple):
    value: bool


class PeerSpeaks(NamedTuple):
    """A peer's ALIVE told what its run speaks (again after a restart):
    the newest sync version it speaks and the ranges it reports ({protocol:
    [oldest, newest]}; None from a release before sync version 3). The
    shell tells carpd the peer's hardened CARP version
    (fwcluster.core.versions.peer_newest)."""
    peer: str
    sync_newest: int
    speaks: dict | None


class Claim(NamedTuple):
    """This member forwards flows it did not before (set_forwarding): dump
    the local table and send what claimable() returns, paced like a full
    refresh, so the peers learn the new owner before the old one's copies
    run out."""


class Yield(NamedTuple):
    """This member stopped forwarding flows it did (set_forwarding; `was`
    is what it forwarded before): send the peers at once what the filter
    held back of them (syncd/handover.py), so the new owner has them before
    the far end's next packet."""
    was: Forwarding


MASK64 = (1 << 64) - 1
_SYSRANDOM = random.SystemRandom()


def _system_nonce() -> int:
    return _SYSRANDOM.getrandbits(64)


def _norm(addr) -> str:
    return str(ipaddress.ip_address(str(addr).split("%", 1)[0]))


def wire_versions(speaks: tuple[int, int], heard: int | None, alive: bool) -> tuple[int, ...]:
    """The wire versions a datagram to a peer goes out at. heard: the newest
    version its current run has sent us (None: not heard in that run yet).
    Before hearing it, ALIVEs go at every version we speak (an older peer
    hears us at once, a newer one learns what we speak) and everything else
    at our oldest; after, one version, the newest both speak."""
    low, high = speaks
    if heard is None:
        return tuple(range(low, high + 1)) if alive else (low,)
    return (min(high, heard),)


@dataclass
class _Tx:
    session: int = 0        # the receiver's nonce from its RESYNC_REQ (0: none yet)
    req: tuple = (0, 0)     # (boot, seq) of the newest request: older ones are ignored
    served: int = 0         # the request id last answered with a bulk (in this session)
    seq: int = 0            # last seq sent to this peer: never reset in a run
    gen: int = 1
    base: int = 0           # dseq of a generation start above this (0; tests start near a wrap)
    next_dseq: int = 1
    acked: int = 0
    queue: OrderedDict = field(default_factory=OrderedDict)  # dseq -> [type, arg, body, count, last_sent, flags]
    pending: list = field(default_factory=list)               # encoded records not yet in a message
    pending_len: int = 0
    last_send: float = float("-inf")
    ack_progress: float = float("-inf")   # when the peer last acknowledged something new

    def reset(self):
        self.gen += 1
        self.next_dseq, self.acked = self.base + 1, self.base
        self.queue.clear()
        self.pending.clear()
        self.pending_len = 0


@dataclass
class _Rx:
    session: int = 0              # our nonce for the peer's stream to us
    boot: int | None = None       # the peer run this session accepted first
    first_seq: int = 0            # and the seq of that first message
    window: ReplayWindow = field(default_factory=ReplayWindow)
    gen: int = 0
    base: int = 0
    expected: int = 1
    early: dict = field(default_factory=dict)    # dseq -> Message
    ack_due: bool = False
    ack_count: int = 0            # messages taken in since the last ACK
    ack_since: float = 0.0        # when the first of them arrived
    nack_at: float = float("-inf")
    seen: set = field(default_factory=set)   # keys of FLAG_OWN contents since the last DONE
    seen_full: bool = False       # seen hit its bound: the next REPAIR_DONE deletes nothing

    def new_session(self, nonce: int):
        self.session, self.boot = nonce, None
        self.window = ReplayWindow()
        self.restart(0)

    def restart(self, gen: int):
        self.gen, self.expected = gen, self.base + 1
        self.early.clear()
        self.ack_due = False
        self.ack_count = 0
        self.nack_at = float("-inf")
        self.clear_seen()

    def clear_seen(self):
        self.seen.clear()
        self.seen_full = False


def _counters() -> dict:
    return {k: 0 for k in (
        "msgs_sent", "msgs_received", "entries_sent", "entries_received", "expectations_received",
        "msgs_acked", "msgs_resent", "msgs_lost", "nacks_sent", "nacks_received",
        "duplicates", "bulk_sent", "bulk_received", "replay", "auth", "stale",
        "digests_sent", "digests_received", "ranges_differing", "ranges_repaired",
        "repair_entries_sent", "stale_deleted", "views_dropped")}


@dataclass
class Peer:
    name: str
    index: int
    links: links.PeerLinks
    tx: _Tx = field(default_factory=_Tx)
    rx: _Rx = field(default_factory=_Rx)
    state: str = "unknown"          # unknown | up | down
    last_seen: float | None = None
    resync: str = "pending"         # pending | done | absent
    req_sent_at: float = float("-inf")
    req_id: int = 0                 # our current bulk request to the peer (REQ dseq, DONE arg)
    table_size: int | None = None   # as the peer reports it in ALIVE
    counters: dict = field(default_factory=_counters)
    # Not yet Prometheus series (syncd/metrics.py): status only.
    sessions: int = 0               # sessions we started with the peer
    off_session: int = 0            # its authentic datagrams outside our session
    view: EntrySet = field(default_factory=EntrySet)   # the entries it originated, as it told us
    view_boot: int | None = None    # the peer run the view came from
    # Versions: the run of its last authentic datagram and the newest wire
    # version that run sent (a run speaks one range: any of its datagrams
    # tells, in session or not); what its version 3 ALIVE says of it.
    heard_boot: int | None = None
    heard_version: int | None = None
    about: wire.About | None = None
    said: tuple | None = None       # (sync version, about) last handed on as PeerSpeaks
    # Its last datagram of a version we do not speak (header untrusted: the
    # version byte and when, by source address only).
    foreign_version: int | None = None
    foreign_at: float | None = None
    bulk_mark: int | None = None    # own.watch() mark of the bulk being sent to it
    bulk_views: list = field(default_factory=list)   # [(view, mark)] of that bulk

    @property
    def addr(self) -> str:
        """The peer's address on the first sync link."""
        return self.links.addrs[0]


class Sync:
    """The sync state of one member towards all its peers."""

    def __init__(self, members: list[tuple[str, str]], me: str, key: bytes, epoch: int,
                 now: float, timing: Timing = Timing(), nonce: Callable[[], int] | None = None,
                 counter_base: int = 0, speaks: tuple[int, int] = (wire.OLDEST, wire.NEWEST),
                 about: wire.About = wire.About("")):
        """epoch is a run number shown in status only: no decision uses it.
        nonce() returns a fresh unpredictable 64-bit number (default: the
        system's random source; tests pass a seeded one). counter_base starts
        every sequence counter there (tests: near a wrap). speaks: the sync
        wire versions (oldest, newest) this build sends and accepts (a
        build capped to the previous release's: its oldest only); about:
        what version 3 ALIVEs tell of this member. members: (name,
        address), or (name, (address on each sync link, ...)).
        """
        ids = wire_indexes(n for n, _ in members)   # by name: config order does not matter
        self.me, self.my_index = me, ids[me]
        self.key, self.epoch, self.t = key, epoch, timing
        self.speaks, self.about = speaks, about
        self._about_body = wire.encode_about(about)
        self.nonce = nonce or _system_nonce
        self.boot = self.nonce() & MASK64
        self.started = now
        self.peers = {}
        for n, a in members:
            if n != me:
                addrs = tuple(_norm(x) for x in ((a,) if isinstance(a, str) else a))
                self.peers[n] = Peer(n, ids[n], links.PeerLinks(addrs))
        # Every link's address of a peer is the peer: its datagrams count
        # on whichever link they come (links.py).
        self.by_addr = {a: p for p in self.peers.values() for a in p.links.addrs}
        self.carrier = [True] * max((len(p.links.addrs) for p in self.peers.values()), default=1)
        for p in self.peers.values():
            p.tx.seq = p.tx.gen = p.tx.base = p.rx.base = counter_base
            p.tx.reset()
            self._new_session(p)
        self.in_sync = not self.peers
        self.local_entries = 0              # reported to peers in ALIVE
        self.drops: dict[str, int] = {}
        self.dumps_wanted: set[str] = set()
        self.actions: list = []
        self.own = EntrySet()               # entries we originated, as we told our peers
        # own key -> when the peers' copies run out: sent at + its timeout
        # (a refresh re-sends only what runs out before the next one)
        self.told: dict[bytes, float] = {}
        self.round = 0                      # anti-entropy rounds
        self.corrections = 0                # own entries the kernel's table corrected
        # Set by the shell from carpd's role lines: a BACKUP hears a master
        # advert, so a silent peer is not absent (contract.peer_absent).
        self.carp_heard = False
        # What this member forwards now (ownership.py; set_forwarding):
        # every decision about whose a flow is asks forwards() of it.
        self.forwarding = Forwarding()
        self.owner_counters = {"deletes_withheld": 0, "ours_kept": 0, "hearsay_skipped": 0,
                               "claims": 0, "yields": 0, "bulks_restarted": 0, "rounds_abandoned": 0}
        self._ae_mark = None
        self.anti_entropy_abort()   # no round running
        self.ae_entries = 0
        if self.in_sync:
            self.actions.append(InSync(True))

    # --- inputs -----------------------------------------------------------------
    def set_forwarding(self, fwd: Forwarding, now: float) -> None:
        """What this member forwards from now on (from carpd's roles). When
        it forwards flows it did not, it claims them at once (a Claim
        action): the old owner stops refreshing them, and its copies must
        not be what the peers go by."""
        old, self.forwarding = self.forwarding, fwd
        if gained(old, fwd):
            self.owner_counters["claims"] += 1
            self.actions.append(Claim())
        if yielded(old, fwd):
            self.owner_counters["yields"] += 1
            self.actions.append(Yield(old))

    def local(self, records, now: float) -> None:
        """Local conntrack changes ((op, Entry), ...) to replicate to every peer
        that is up; call flush() after a batch."""
        self._local_encoded([wire.encode_record(op, e) for op, e in records], now)

    def local_records(self, encoded: list[bytes], now: float) -> None:
        """local() of changes already in wire records (wire.encode_record)."""
        self._local_encoded(encoded, now)

    def _local_encoded(self, encoded: list[bytes], now: float) -> None:
        own, views, told = self.own, [p.view for p in self.peers.values() if p.view.size], self.told
        timeout, fwd, held = wire.record_timeout, self.forwarding, None
        for rec in encoded:
            key = record_key(rec)
            if rec[0] == OP_DELETE:
                own.remove(key)
                told.pop(key, None)
                if forwards(key, fwd, rec) is False:
                    # A copy of a flow someone else forwards ran out here
                    # (or was removed here): the flow lives on there.
                    held = held or []
                    held.append(rec)
                    continue
            else:
                own.put(rec, key)
                told[key] = now + timeout(rec)
            for v in views:      # we speak for it now
                v.remove(key)
        if held:
            self.owner_counters["deletes_withheld"] += len(held)
            gone = set(map(id, held))
            encoded = [rec for rec in encoded if id(rec) not in gone]
        for p in self.peers.values():
            if p.state != "down":
                tx = p.tx
                tx.pending.extend(encoded)
                tx.pending_len += len(encoded)

    def local_expectations(self, encoded: list[bytes], now: float) -> None:
        """Expectations this member's kernel made or ended (expect.py
        records), on the stream to every peer that is up, speaks sync 3
        and reads them (expect.reads_expectations), behind the entries
        already pending (their masters). Not part of the own set: a bulk
        or a repair does not carry them."""
        for p in self.peers.values():
            if (p.state != "down" and (self.sync_version(p) or 0) >= 3
                    and expect.reads_expectations(p.about)):
                p.tx.pending.extend(encoded)
                p.tx.pending_len += len(encoded)

    def bulk(self, peer: str, entries, now: float) -> None:
        """The answer to a Dump action with the whole table at hand:
        bulk_begin, bulk_add, bulk_end."""
        self.bulk_begin(peer, now)
        self.bulk_add(peer, entries, now)
        self.bulk_end(peer, now)

    def bulk_begin(self, peer: str, now: float) -> None:
        """The answer to a Dump action, in pieces: start a new generation
        towards the peer; the table follows in bulk_add pieces (read from
        the kernel after this call, sent between live events), then
        bulk_end sends RESYNC_DONE. A running bulk to the peer is dropped.
        Every change to the own set from now on marks its key, and a dump
        copy of a marked key is not sent: the live event (on the same
        stream, after the bulk's start) carried newer state."""
        p = self.peers[peer]
        self.bulk_abort(peer, again=False)
        p.tx.reset()
        p.bulk_mark = self.own.watch()
        # A peer's change makes a dump copy stale too (its origin deleted
        # it: sent as hearsay, a third member would re-create it for good).
        p.bulk_views = [(q.view, q.view.watch()) for q in self.peers.values()]
        p.counters["bulk_sent"] += 1

    def bulk_add(self, peer: str, entries, now: float) -> int:
        """A piece of the table for a bulk begun with bulk_begin; returns
        the number of entries sent (a touched key's copy is not)."""
        p = self.peers[peer]
        mark = p.bulk_mark
        if mark is None:
            return 0
        own, views = self.own, p.bulk_views
        if not (own.valid(mark) and all(v.valid(m) for v, m in views)):
            # The change logs overflowed: the bulk cannot tell stale copies
            # any more. Start it over (a new generation replaces this one).
            self.owner_counters["bulks_restarted"] += 1
            self.bulk_abort(peer)
            return 0
        recs, others = [], []
        # Not waiting for in_sync here: what we send as nobody's, the peer
        # could never learn was deleted.
        ours = self._speaks_for(True)
        for e in entries:
            rec = wire.encode_record(OP_UPSERT, e)
            key = record_key(rec)
            if own.changed_since(key, mark) or any(v.changed_since(key, m) for v, m in views):
                continue
            if ours(key, rec):
                own.put(rec, key)   # other peers: the next digest repairs them
                recs.append(rec)
            else:
                others.append(rec)
        self._send_records(p, recs, now, wire.FLAG_BULK | wire.FLAG_OWN)
        self._send_records(p, others, now, wire.FLAG_BULK)
        return len(recs) + len(others)

    def bulk_end(self, peer: str, now: float) -> None:
        """The table is all sent: RESYNC_DONE for the request served."""
        p = self.peers[peer]
        if p.bulk_mark is None:
            return
        self.bulk_abort(peer, again=False)
        self._queue(p, wire.RESYNC_DONE, p.tx.served, b"", 0, now)

    def bulk_abort(self, peer: str, again: bool = True) -> None:
        """Drop a running bulk without RESYNC_DONE (its dump failed); with
        again, the peer gets another one (a new Dump action): it would not
        ask again for the same request."""
        p = self.peers[peer]
        if p.bulk_mark is not None:
            p.bulk_mark = None
            self.own.unwatch()
            for view, _mark in p.bulk_views:
                view.unwatch()
            p.bulk_views = []
            if again:
                self.dumps_wanted.add(peer)

    def _send_records(self, p: Peer, recs: list[bytes], now: float, flags: int) -> None:
        if p.tx.pending:
            self._pack(p, now)
        p.tx.pending, p.tx.pending_len = recs, len(recs)
        self._pack(p, now, flags)

    def claimable(self, entries) -> list:
        """The entries of a refresh dump this member may send as its own:
        all but those a peer that is not down speaks for. Sending such a
        replica would take it over with an old copy, and bring back on its
        origin what was deleted there since our dump (active-active, or no
        carpd: every member refreshes). A down peer's entries are fair game:
        this member carries them now, and the others must keep them alive."""
        return self._claim(entries, None)

    def refreshable(self, entries, now: float, horizon: float) -> list:
        """The claimable entries whose copies on the peers run out within
        `horizon` seconds (or were never sent as ours): what the periodic
        refresh of non-TCP entries must re-send. An entry a live event sent
        lately went out with its full timeout and needs nothing yet."""
        return self._claim(entries, now + horizon)

    def _claim(self, entries, due: float | None) -> list:
        """Entries we forward (ORIGIN: no peer that is up speaks for); with
        due, only those whose copies on the peers run out before it (told)."""
        fwd = self.forwarding
        if fwd.mode == STANDBY and not fwd.owned:
            return []
        views = [p.view for p in self.peers.values() if p.state != "down" and p.view.size]
        if fwd.mode == ORIGIN and not views and due is None:
            return list(entries)
        encode, told = wire.encode_record, self.told
        out = []
        for e in entries:
            rec = encode(OP_UPSERT, e)
            key = record_key(rec)
            if due is not None and told.get(key, -1.0) >= due:
                continue
            mine = forwards(key, fwd, rec)
            if mine or (mine is None and not any(key in v for v in views)):
                out.append(e)
        return out

    # --- anti-entropy -------------------------------------------------------------
    def _speaks_for(self, ready: bool) -> Callable[[bytes, bytes], bool]:
        """(key, record) -> whether an entry of our table is ours to tell: a flow we
        forward. ORIGIN (nobody knows who forwards): what we told as ours,
        and, once ready (anti_entropy: in sync; before, our views are not
        filled yet and a peer's entries look like nobody's), what no peer
        speaks for."""
        fwd, own = self.forwarding, self.own
        if fwd.mode != ORIGIN:
            return lambda key, rec: forwards(key, fwd, rec)
        if not ready:
            return lambda key, rec: key in own
        views = [p.view for p in self.peers.values() if p.view.size]
        return lambda key, rec: key in own or not any(key in v for v in views)

    def anti_entropy(self, entries, now: float) -> int:
        """One round with the whole dump at hand (anti_entropy_begin, _add,
        _finish); returns the number of corrections sent."""
        self.anti_entropy_begin(now)
        self.anti_entropy_add(entries, now)
        return self.anti_entropy_finish(now)

    def anti_entropy_begin(self, now: float) -> None:
        """Start a round whose dump of the local table (the syncable
        entries) comes in pieces (anti_entropy_add) between live events.
        From now on every change to the own set (live events, a peer taking
        an entry over, a bulk adopting one) marks its key: the dump's copy
        may be older than the change, so the round corrects nothing for it
        (the next round covers it). A running round is dropped."""
        self.anti_entropy_abort()
        self._ae_mark = self.own.watch()
        # A peer's change (its live delete, above all) also makes the dump's
        # copy stale: adopting that copy would send the deleted entry back.
        self._ae_views = [(p.view, p.view.watch()) for p in self.peers.values()]
        self.ae_entries = 0

    @property
    def anti_entropy_running(self) -> bool:
        return self._ae_mark is not None

    def _ae_touched(self, key: bytes) -> bool:
        return self.own.changed_since(key, self._ae_mark) or any(
            v.changed_since(key, m) for v, m in self._ae_views)

    def _ae_valid(self) -> bool:
        """The round's change logs still cover it (none overflowed)."""
        return self.own.valid(self._ae_mark) and all(v.valid(m) for v, m in self._ae_views)

    def anti_entropy_add(self, entries, now: float) -> None:
        """A piece of the round's dump: note which own entries it shows
        changed, and (while we could adopt) which ones nobody speaks for."""
        if self._ae_mark is None:
            return
        own, seen, fix, touched = self.own, self._ae_seen, self._ae_fix, self._ae_touched
        ours = self._speaks_for(self.in_sync)
        for e in entries:
            rec = wire.encode_record(OP_UPSERT, e)
            key = record_key(rec)
            seen.add(key)
            if touched(key) or not ours(key, rec):
                continue
            held = own.get(key)
            if held is None or held[0] != digest.record_hash(rec):
                fix[key] = rec
        self.ae_entries += len(entries)

    def anti_entropy_sweep(self, ranges: int) -> bool:
        """Once the whole dump is in: look through `ranges` more ranges of
        the own set for entries the dump did not show (gone from the kernel
        unless touched since the round began). True when all are done; a
        shell calls it a few ranges per loop turn (all 100k keys at once
        took ~25 ms), finish() does what is left."""
        if self._ae_mark is None:
            return True
        own, seen, touched = self.own, self._ae_seen, self._ae_touched
        end = min(self._ae_swept + ranges, digest.RANGES)
        for rng in own.ranges[self._ae_swept:end]:
            # The difference iterates the range's side (small), not seen's.
            for key in set(rng).difference(seen):
                if not touched(key):
                    self._ae_gone.append(key)
        self._ae_swept = end
        return end == digest.RANGES

    def anti_entropy_abort(self) -> None:
        """The dump failed: no corrections, no digest (the next round)."""
        if self._ae_mark is not None:
            self.own.unwatch()
            for view, _mark in self._ae_views:
                view.unwatch()
        self._ae_mark = None
        self._ae_views: list = []
        self._ae_seen: set = set()
        self._ae_fix: dict = {}     # key -> record that may need a correction
        self._ae_gone: list = []    # keys of own entries the dump did not show
        self._ae_swept = 0          # ranges looked through for them

    def anti_entropy_finish(self, now: float) -> int:
        """The dump is complete: correct the own set where conntrack events
        were lost (an own entry gone: delete; changed: upsert; while
        carrying, an entry nobody speaks for becomes ours), leaving out
        every key touched since the round began, send the corrections, then
        a DIGEST of the own set as it is now to every peer that is up.
        Returns the number of corrections sent."""
        if self._ae_mark is None:
            return 0
        if not self._ae_valid():
            # Too much changed while the dump was read to tell what is
            # stale: no corrections and no digest (the next round).
            self.owner_counters["rounds_abandoned"] += 1
            self.anti_entropy_abort()
            return 0
        self.anti_entropy_sweep(digest.RANGES)
        own, touched = self.own, self._ae_touched
        fixes = []
        ours = self._speaks_for(self.in_sync)
        # An untouched key's own state is what it was when its piece came
        # (or its range was swept): the check then still holds (views may
        # have grown since, or the forwarding changed: ask again).
        for key, rec in self._ae_fix.items():
            if not touched(key) and ours(key, rec):
                fixes.append(rec)
        for key in self._ae_gone:
            if not touched(key):
                fixes.append(digest.as_delete(own.get(key)[1]))
        self.anti_entropy_abort()     # the round's state is done with
        self.corrections += len(fixes)
        if fixes:
            for p in self.peers.values():
                if p.tx.pending:
                    self._pack(p, now)
            self._local_encoded(fixes, now)
            for p in self.peers.values():
                if p.tx.pending:
                    self._pack(p, now, wire.FLAG_OWN)
        self.round += 1
        body = digest.encode_digests(own.digests)
        for p in self.peers.values():
            if p.state == "up":
                if p.tx.pending:
                    self._pack(p, now)
                p.counters["digests_sent"] += 1
                self._queue(p, wire.DIGEST, self.round, body, 0, now)
        return len(fixes)

    def _learn(self, p: Peer, m: wire.Message) -> None:
        """The peer's own entries as it tells them: its view; we no longer
        speak for them (unless we forward the flow: then its word is an
        echo or stale, ours stands), nor does another peer."""
        view, rx = p.view, p.rx
        contents = m.flags & wire.FLAG_OWN
        others = [q.view for q in self.peers.values() if q is not p and q.view.size]
        own, told, fwd = self.own, self.told, self.forwarding
        seen, limit = rx.seen, self.t.max_seen
        for rec in m.raw:
            key = record_key(rec)
            if rec[0] == OP_DELETE:
                view.remove(key)
            else:
                view.put(rec, key)
                if contents and not rx.seen_full:
                    seen.add(key)
                    if len(seen) > limit:
                        rx.seen_full = True
                        seen.clear()
            if own.size and not forwards(key, fwd, rec):
                own.remove(key)
                told.pop(key, None)
            for v in others:
                v.remove(key)

    def _on_digest(self, p: Peer, m: wire.Message, now: float) -> None:
        p.counters["digests_received"] += 1
        diff = digest.differing(p.view.digests, digest.decode_digests(m.body))
        if diff:
            p.counters["ranges_differing"] += len(diff)
            self._send(p, wire.REPAIR_REQ, p.rx.gen, 0, m.arg, digest.to_bitmap(diff), now)

    def _on_repair_req(self, p: Peer, m: wire.Message, now: float) -> None:
        """Send the whole contents of the asked ranges, then REPAIR_DONE, on
        the reliable stream (after whatever is pending: the order the
        receiver's view was built in)."""
        if p.state == "down":
            return
        ranges = digest.from_bitmap(m.body)
        recs = [rec for r in ranges for rec in self.own.records(r)]
        p.counters["ranges_repaired"] += len(ranges)
        p.counters["repair_entries_sent"] += len(recs)
        self._send_records(p, recs, now, wire.FLAG_OWN)
        self._queue(p, wire.REPAIR_DONE, m.arg, m.body, 0, now)

    def _repair_done(self, p: Peer, m: wire.Message) -> None:
        """The contents of these ranges are complete: what we hold from the
        peer there and it did not send, it no longer has."""
        view, seen = p.view, p.rx.seen
        if p.rx.seen_full:      # what was sent is not known: delete nothing
            p.rx.clear_seen()
            return
        gone = []
        for r in digest.from_bitmap(m.body):
            for key in view.keys_in(r):
                if key not in seen:
                    gone.append(digest.as_delete(view.remove(key)))
        p.rx.clear_seen()
        if gone:
            p.counters["stale_deleted"] += len(gone)
            self._apply(p, tuple(wire.decode_record(rec, 0)[:2] for rec in gone), gone,
                        fix=True)

    def datagram(self, addr: str, data: bytes, now: float) -> None:
        p = self.by_addr.get(addr)
        if p is None:
            try:
                addr = _norm(addr)
                p = self.by_addr.get(addr)
            except ValueError:
                p = None
        if p is None:
            self._drop("unknown_peer")
            return
        try:
            m = wire.decode(self.key, data, self.speaks)
        except wire.WireError as e:
            self._drop(e.reason)
            if e.reason == "bad_auth":
                p.counters["auth"] += 1
            elif e.reason == "bad_version":
                p.foreign_version, p.foreign_at = data[2], now
            return
        if m.src != p.index or m.dst != self.my_index:
            self._drop("misdirected")
            return
        self._heard(p, m)
        self._heard_on(p, p.links.link_of(addr), now)
        rx = p.rx
        if m.session != rx.session or (rx.boot is not None and m.boot != rx.boot):
            # Not our current session with this sender: a recording or a late
            # datagram of an earlier one, or a peer that has not learned the
            # session yet (it restarted, our request was lost). Never
            # applied; ask again. A RESYNC_REQ needs no session: it only
            # tells where to send.
            p.off_session += 1
            # It echoes our current nonce from another run: that run heard
            # our latest request, so it is live (a recording cannot echo a
            # nonce drawn after it was made). Anything else may be a replay:
            # it may make us repeat our request, never open a session or
            # start a bulk (issue 21 #4).
            fresh = m.session == rx.session
            if fresh:
                self._new_session(p)
                self._request(p, now)
            elif m.boot != rx.boot or m.seq > rx.first_seq:
                self._ask_again(p, now)   # else: sent before the peer joined this session
            if m.type == wire.RESYNC_REQ:
                self._on_request(p, m, now, fresh)
            return
        if not rx.window.check_and_mark(m.seq):
            self._drop("replay")
            p.counters["replay"] += 1
            return
        if rx.boot is None:
            rx.boot, rx.first_seq = m.boot, m.seq
            if p.view_boot != m.boot:
                # A new run of the peer: its own set starts afresh; what it
                # told us before is kept in the kernel (someone may carry it).
                if p.view.size:
                    p.counters["views_dropped"] += 1
                    p.view.clear()
                p.view_boot = m.boot
                p.about = None      # its ALIVE tells again
        p.counters["msgs_received"] += 1
        was = p.state
        p.state, p.last_seen = "up", now
        if was == "down":
            # Back from a partition: whatever we queued for it is gone.
            self.dumps_wanted.add(p.name)
        handler = self._handlers[m.type]
        handler(self, p, m, now)

    @staticmethod
    def _heard(p: Peer, m: wire.Message) -> None:
        """An authentic datagram: what its sender's run speaks. Another run
        than the last one heard starts afresh (a restart may have capped it)."""
        spoken = wire.newest_spoken(m)
        if m.boot != p.heard_boot:
            p.heard_boot, p.heard_version = m.boot, spoken
        elif spoken > p.heard_version:
            p.heard_version = spoken

    def _heard_on(self, p: Peer, link: int, now: float) -> None:
        """An authentic datagram came on this link: it answers; the
        preferred link may be back."""
        p.links.heard[link] = now
        if link < p.links.chosen:
            p.links.choose(self.carrier, now, links.silent_after(self.t.alive))

    def set_carrier(self, link: int, up: bool, now: float) -> None:
        """Our side of a sync link gained or lost carrier (the shell
        watches the interface): streams move at once, not after silence."""
        self.carrier[link] = up
        for p in self.peers.values():
            p.links.choose(self.carrier, now, links.silent_after(self.t.alive))

    def peer_version(self, p: Peer) -> int | None:
        """The newest version the peer's current run (the one our session
        is locked to) has sent us; None before it is known."""
        if p.rx.boot is None or p.heard_boot != p.rx.boot:
            return None
        return p.heard_version

    def sync_version(self, p: Peer) -> int | None:
        """The wire version in use towards the peer (None: not heard yet)."""
        heard = self.peer_version(p)
        return None if heard is None else wire_versions(self.speaks, heard, False)[0]

    # --- message handlers --------------------------------------------------------
    def _on_stream(self, p: Peer, m: wire.Message, now: float) -> None:
        rx = p.rx
        if m.gen < rx.gen:
            p.counters["stale"] += 1
            return
        if m.gen > rx.gen:
            rx.restart(m.gen)
        if m.dseq < rx.expected or m.dseq in rx.early:
            p.counters["duplicates"] += 1
            self._ack_later(rx, now)
            return
        if m.dseq > rx.expected:
            if len(rx.early) < self.t.max_reorder:
                rx.early[m.dseq] = m
            # NACK when a gap opens, then at most once per rto (tick repeats it).
            if len(rx.early) == 1 or now - rx.nack_at >= self.t.rto:
                self._nack(p, rx.expected, min(rx.early) - 1 if rx.early else m.dseq - 1, now)
            return
        self._deliver(p, m, now)
        while rx.expected in rx.early:
            self._deliver(p, rx.early.pop(rx.expected), now)
        self._ack_later(rx, now)
        if rx.early:
            self._nack(p, rx.expected, min(rx.early) - 1, now)

    @staticmethod
    def _ack_later(rx: _Rx, now: float) -> None:
        if not rx.ack_due:
            rx.ack_due, rx.ack_since = True, now
        rx.ack_count += 1

    def _deliver(self, p: Peer, m: wire.Message, now: float) -> None:
        p.rx.expected = m.dseq + 1
        if m.type == wire.DATA:
            exp = ()
            if any(rec[0] in expect.OPS for rec in m.raw):
                m, exp = self._expectations(p, m)
            p.counters["entries_received"] += len(m.records)
            bulk = bool(m.flags & wire.FLAG_BULK)
            if m.flags & wire.FLAG_OWN or not bulk:
                self._learn(p, m)
            if m.records:
                own = bool(m.flags & wire.FLAG_OWN)
                self._apply(p, m.records, m.raw, bulk, own and not bulk, bulk and not own)
            if exp:     # after their masters' entries
                self.actions.append(Expect(p.name, exp))
        elif m.type == wire.DIGEST:
            self._on_digest(p, m, now)
        elif m.type == wire.REPAIR_DONE:
            self._repair_done(p, m)
        elif m.type == wire.RESYNC_DONE:
            p.rx.clear_seen()
            p.counters["bulk_received"] += 1
            if m.arg == p.req_id and p.resync != "done":
                p.resync = "done"
                self._check_in_sync()

    def _expectations(self, p: Peer, m: wire.Message) -> tuple[wire.Message, tuple]:
        """A DATA message split: the message with its entries alone, and
        its expectations (for an Expect action)."""
        exp = tuple(item for item in m.records if item[0] in expect.OPS)
        p.counters["expectations_received"] += len(exp)
        kept = [(item, rec) for item, rec in zip(m.records, m.raw) if rec[0] not in expect.OPS]
        return m._replace(records=tuple(i for i, _ in kept), raw=tuple(r for _, r in kept)), exp

    def _apply(self, p: Peer, records: tuple, raw, replace: bool = False, fix: bool = False,
               hearsay: bool = False) -> None:
        """Apply a peer's records, except what would undo a flow we
        forward: a delete of it is not applied (its copy there ran out;
        the flow lives here), and a bulk's or a repair's copy of it is only
        created where it is missing (Apply.keep: one made on the old owner
        just before a handover). A live update of it is applied: it is the
        old owner's last word on the flow's state (an ESTABLISHED after our
        copy's SYN_SENT, sent while the vips moved), newer than our copy,
        which no packet may have touched yet. A bulk's hearsay (what the sender does not speak
        for) is never applied: the flow's forwarder tells it as its own,
        and a hearsay copy races the forwarder's delete on another stream
        (applied after it, it would stay for good)."""
        fwd, counters = self.forwarding, self.owner_counters
        if hearsay:
            counters["hearsay_skipped"] += len(records)
            return
        if fwd.mode == ORIGIN or (fwd.mode == STANDBY and not fwd.owned):
            self.actions.append(Apply(p.name, records, replace, fix))   # none is known ours
            return
        # Runs of records applied alike, in the order they came: a flow
        # created and deleted in one batch must end deleted (seed 397 of the
        # handover simulation kept it when the two went out in two applies).
        runs, own, live = [], self.own, not (replace or fix)
        for item, rec in zip(records, raw):
            key = record_key(rec)
            if not forwards(key, fwd, rec):
                keep = False
            elif item[0] == OP_DELETE and key not in own:
                # Ours by forwarding, but never told as ours: the copy a peer
                # gave us (keep) while we were taking over; its word goes.
                keep = False
            elif item[0] == OP_DELETE:
                counters["ours_kept"] += 1
                continue
            else:
                keep = not live                 # a live update applies: see above
            if runs and runs[-1][0] == keep:
                runs[-1][1].append(item)
            else:
                runs.append((keep, [item]))
        for keep, items in runs:
            self.actions.append(Apply(p.name, tuple(items), replace, fix, keep))

    def _on_ack(self, p: Peer, m: wire.Message, now: float) -> None:
        tx = p.tx
        if m.gen != tx.gen or m.dseq <= tx.acked:
            return
        q = tx.queue
        while q:
            dseq = next(iter(q))
            if dseq > m.dseq:
                break
            del q[dseq]
            p.counters["msgs_acked"] += 1
        tx.acked = min(m.dseq, tx.next_dseq - 1)
        tx.ack_progress = now

    def _on_nack(self, p: Peer, m: wire.Message, now: float) -> None:
        tx = p.tx
        p.counters["nacks_received"] += 1
        if m.gen != tx.gen:
            return
        lo, hi = max(m.dseq, tx.acked + 1), min(m.arg, tx.next_dseq - 1)
        if hi - lo > self.t.max_queue:
            hi = lo + self.t.max_queue
        for dseq in range(lo, hi + 1):
            item = tx.queue.get(dseq)
            if item is None:
                # Gone from the queue: only a fresh bulk transfer can repair it.
                p.counters["msgs_lost"] += hi - dseq + 1
                self.dumps_wanted.add(p.name)
                return
            self._transmit(p, dseq, item, now)
            p.counters["msgs_resent"] += 1

    def _on_alive(self, p: Peer, m: wire.Message, now: float) -> None:
        rx = p.rx
        p.table_size = m.arg
        if m.about is not None:
            p.about = m.about
        self._tell_speaks(p)
        if m.gen < rx.gen:
            return
        if m.gen > rx.gen:
            rx.restart(m.gen)
        if m.dseq >= rx.expected and now - rx.nack_at >= self.t.rto:
            self._nack(p, rx.expected, m.dseq, now)

    def _tell_speaks(self, p: Peer) -> None:
        """A PeerSpeaks when the peer's ALIVE says something new of its run.
        Only an ALIVE tells: its version 2 form carries the sender's newest
        version (wire.newest_spoken), another message of a current run may
        be at 2 for a while."""
        version = self.peer_version(p)
        said = (version, p.about)
        if version is None or said == p.said:
            return
        p.said = said
        speaks = {n: [lo, hi] for n, lo, hi in p.about.speaks} if p.about else None
        self.actions.append(PeerSpeaks(p.name, version, speaks))

    def _on_request(self, p: Peer, m: wire.Message, now: float, fresh: bool = True) -> None:
        """The peer asks for bulk m.dseq in its session m.arg. Repeats, and
        requests older than the newest one (same run, lower seq), change
        nothing: the bulk travels on the reliable stream. Only a fresh
        request (in our session, or echoing our current nonce) gets a bulk;
        a stale one (a peer that does not know our nonce yet, or a replay)
        only says where to send while the peer is not up, and we ask it
        again, so that it echoes our nonce."""
        tx = p.tx
        if m.arg == 0 or (m.boot == tx.req[0] and m.seq <= tx.req[1]):
            return
        if not fresh:
            if p.state != "up" and m.arg != tx.session:
                self._send_to(p, m.arg)
                self._request(p, now)
            return
        tx.req = (m.boot, m.seq)
        if m.arg == tx.session and m.dseq == tx.served:
            return
        if m.arg != tx.session:
            self._send_to(p, m.arg)
            if p.resync == "pending":
                self._request(p, now)   # it now echoes the peer's nonce: fresh there
        tx.served = m.dseq
        self.dumps_wanted.add(p.name)

    def _send_to(self, p: Peer, session: int) -> None:
        """Our stream to the peer now goes to its session: a new generation.
        A bulk under way was for the old session: it stops (the new one
        asks for its own), so none of its pieces lands in the new one."""
        self.bulk_abort(p.name, again=False)
        p.tx.session = session
        p.tx.served = 0
        p.tx.reset()

    _handlers = {wire.DATA: _on_stream, wire.RESYNC_DONE: _on_stream, wire.ACK: _on_ack,
                 wire.NACK: _on_nack, wire.ALIVE: _on_alive, wire.RESYNC_REQ: _on_request,
                 wire.DIGEST: _on_stream, wire.REPAIR_DONE: _on_stream,
                 wire.REPAIR_REQ: _on_repair_req}

    # --- output -------------------------------------------------------------------
    def _send(self, p: Peer, mtype: int, gen: int, dseq: int, arg: int, body: bytes, now: float,
              flags: int = 0, link: int | None = None):
        """link: None for the chosen link (everything but per-link ALIVEs)."""
        tx = p.tx
        link = p.links.chosen if link is None else link
        addr = p.links.addrs[link]
        alive = mtype == wire.ALIVE
        for version in wire_versions(self.speaks, self.peer_version(p), alive):
            tx.seq += 1
            m = wire.Message(mtype, self.my_index, p.index, tx.session, self.boot, tx.seq, gen,
                             dseq, arg, flags=flags, version=version)
            if alive:   # version 3 tells what we are; an older one, our newest
                body = self._about_body if version >= 3 else b""
                m = m._replace(flags=0 if version == self.speaks[1] else
                               self.speaks[1] << wire.NEWEST_SHIFT)
            self.actions.append(Send(addr, wire.encode(self.key, m, body), link))
            p.counters["msgs_sent"] += 1
        tx.last_send = p.links.sent[link] = now

    def _transmit(self, p: Peer, dseq: int, item: list, now: float) -> None:
        mtype, arg, body, _count, _last, flags = item
        item[4] = now
        self._send(p, mtype, p.tx.gen, dseq, arg, body, now, flags)

    def _queue(self, p: Peer, mtype: int, arg: int, body: bytes, count: int, now: float,
               flags: int = 0) -> None:
        tx = p.tx
        dseq = tx.next_dseq
        tx.next_dseq += 1
        item = [mtype, arg, body, count, now, flags]
        tx.queue[dseq] = item
        if len(tx.queue) > self.t.max_queue:
            tx.queue.popitem(last=False)   # the peer will NACK it and get a bulk
        p.counters["entries_sent"] += count
        self._transmit(p, dseq, item, now)

    def _pack(self, p: Peer, now: float, flags: int = 0) -> None:
        tx = p.tx
        body, count = [], 0
        size = 0
        for rec in tx.pending:
            if size + len(rec) > wire.MAX_BODY:
                self._queue(p, wire.DATA, count, b"".join(body), count, now, flags)
                body, count, size = [], 0, 0
            body.append(rec)
            count += 1
            size += len(rec)
        if count:
            self._queue(p, wire.DATA, count, b"".join(body), count, now, flags)
        tx.pending = []
        tx.pending_len = 0

    def _nack(self, p: Peer, lo: int, hi: int, now: float) -> None:
        if hi < lo:
            return
        p.rx.nack_at = now
        p.counters["nacks_sent"] += 1
        self._send(p, wire.NACK, p.rx.gen, lo, hi, b"", now)

    def _request(self, p: Peer, now: float) -> None:
        p.req_sent_at = now
        self._send(p, wire.RESYNC_REQ, 0, p.req_id, p.rx.session, b"", now)

    def _new_session(self, p: Peer) -> None:
        """A fresh nonce for the peer's stream to us: whatever was sent in
        earlier sessions no longer applies. The peer's bulk completes it."""
        nonce = 0
        while nonce == 0 or nonce == p.rx.session:
            nonce = self.nonce() & MASK64
        p.rx.new_session(nonce)
        p.sessions += 1
        p.req_id += 1
        if p.resync == "done":
            p.resync = "pending"

    def _ask_again(self, p: Peer, now: float) -> None:
        """The peer sends outside our session and may not know our nonce:
        repeat our request (at most once per resync_retry) with the current
        nonce. A new run of the peer learns it from this and echoes it, and
        that fresh echo opens the new session (datagram()); a replay of an
        old one costs one request, no session and no bulk."""
        if now - p.req_sent_at < self.t.resync_retry:
            return
        self._request(p, now)

    def flush(self, now: float, delay_acks: bool = False) -> None:
        """Pack pending entries into messages and acknowledge what arrived
        (with delay_acks, only ACKs Timing.ack_delay/ack_every make due;
        tick() sends the rest)."""
        t = self.t
        for p in self.peers.values():
            if p.tx.pending:
                self._pack(p, now)
            rx = p.rx
            if rx.ack_due and (not delay_acks or rx.ack_count >= t.ack_every
                               or now - rx.ack_since >= t.ack_delay):
                rx.ack_due, rx.ack_count = False, 0
                self._send(p, wire.ACK, rx.gen, rx.expected - 1, 0, b"", now)

    def tick(self, now: float) -> None:
        """Timers: liveness, resends, ALIVE, NACK repeats, resync requests."""
        t = self.t
        silent = links.silent_after(t.alive)
        for p in self.peers.values():
            p.links.choose(self.carrier, now, silent)
            if p.state == "up" and now - p.last_seen > t.peer_timeout:
                p.state = "down"
                p.tx.queue.clear()
                p.tx.pending.clear()
                # Its bulk ends (it gets a new one when it is back) and with
                # it the bulk's change logs; its repair contents are void.
                self.bulk_abort(p.name, again=False)
                p.rx.clear_seen()
            if p.state == "up":
                # Gaps are repaired by NACKs (the receiver sees later messages
                # or an ALIVE with the last dseq); the timer only probes when
                # acknowledgements stopped coming: a slow receiver that still
                # acks must not be buried under duplicates. Oldest first, a
                # few at a time.
                due = []
                if now - p.tx.ack_progress >= t.rto:
                    for dseq, item in p.tx.queue.items():
                        if now - item[4] < t.rto or len(due) >= t.resend_burst:
                            break
                        due.append((dseq, item))
                for dseq, item in due:
                    self._transmit(p, dseq, item, now)
                    p.counters["msgs_resent"] += 1
                rx = p.rx
                if rx.early and now - rx.nack_at >= t.rto:
                    self._nack(p, rx.expected, min(rx.early) - 1, now)
            if p.resync == "pending" and p.state != "up":
                silent_since = self.started if p.last_seen is None else p.last_seen
                if contract.peer_absent(now - silent_since, t.absent_after, self.carp_heard,
                                        self._foreign_for(p, now)):
                    p.resync = "absent"
                    self._check_in_sync()
            # Keep asking (also an absent peer: it may come later with state).
            if p.resync != "done" and p.state != "down" and now - p.req_sent_at >= t.resync_retry:
                self._request(p, now)
            for link in p.links.alive_due(self.carrier, now, t.alive):
                self._send(p, wire.ALIVE, p.tx.gen, p.tx.next_dseq - 1, self.local_entries, b"", now,
                           link=link)
        self.flush(now)

    def next_tick(self, now: float, resolution: float) -> float:
        """When tick() next has work. While any timer may run (messages
        unacked or unpacked, an ACK held back, a gap, a bulk asked for, a
        peer not up) within `resolution`; on idle streams not before the
        next ALIVE is due or a peer times out, and never later than one
        ALIVE interval: the shell need not wake an idle daemon every tick.
        Each link counts (its own ALIVE, its silence moving the stream)."""
        t = self.t
        silent = links.silent_after(t.alive)
        due = now + t.alive
        for p in self.peers.values():
            tx, rx = p.tx, p.rx
            if (p.state != "up" or p.resync != "done" or tx.queue or tx.pending
                    or rx.ack_due or rx.early):
                return now + resolution
            due = min(due, p.last_seen + t.peer_timeout, p.links.next_due(self.carrier, now, t.alive, silent))
        return due

    @staticmethod
    def _foreign_for(p: Peer, now: float) -> float | None:
        """Seconds since the peer's last datagram of a version we do not
        speak (None: none in this run)."""
        return None if p.foreign_at is None else now - p.foreign_at

    def set_carp_heard(self, heard: bool) -> None:
        """carpd hears (or stops hearing) a master advert from a peer."""
        self.carp_heard = heard

    def resync(self, now: float) -> None:
        """Ask every peer for a fresh bulk transfer (e.g. after losing the
        master role: the local entries went stale while the peer carried the
        flows), in the current session: what is in flight still arrives.
        Does not change in_sync."""
        for p in self.peers.values():
            p.req_id += 1
            if p.resync == "done":
                p.resync = "pending"
            p.req_sent_at = float("-inf")
        self.tick(now)

    def take_dumps(self) -> list[str]:
        """Peers that need a bulk transfer now (call bulk() for each)."""
        wanted, self.dumps_wanted = sorted(self.dumps_wanted), set()
        return wanted

    def drain(self) -> list:
        """Actions produced since the last drain, in order."""
        out, self.actions = self.actions, []
        for name in self.take_dumps():
            out.append(Dump(name))
        return out

    # --- state ---------------------------------------------------------------------
    def _check_in_sync(self) -> None:
        if not self.in_sync and all(p.resync != "pending" for p in self.peers.values()):
            self.in_sync = True
            self.actions.append(InSync(True))

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def status(self, now: float) -> dict:
        peers = {}
        for p in self.peers.values():
            q = p.tx.queue
            oldest = next(iter(q.values()))[4] if q else None
            peers[p.name] = {
                "address": p.addr, "state": p.state, "resync": p.resync,
                "link": p.links.chosen, "link_switches": p.links.switches,
                "links": p.links.states(self.carrier, now, links.silent_after(self.t.alive)),
                "last_seen": None if p.last_seen is None else round(now - p.last_seen, 3),
                "session": f"{p.rx.session:016x}", "sessions": p.sessions,
                "off_session": p.off_session, "table_size": p.table_size,
                "unacked": len(q), "lag": 0.0 if oldest is None else round(now - oldest, 3),
                "sync_version": self.sync_version(p),
                "version": p.about.release if p.about else None,
                "speaks": {n: [lo, hi] for n, lo, hi in p.about.speaks} if p.about else None,
                "unintelligible": p.foreign_version if p.state != "up" and contract.unintelligible(
                    self._foreign_for(p, now), self.t.absent_after) else None,
                **p.counters}
        return {"epoch": self.epoch, "boot": f"{self.boot:016x}", "in_sync": self.in_sync, "local_entries": self.local_entries,
                "sync_versions": list(self.speaks),
                "drops": dict(self.drops), "peers": peers}
