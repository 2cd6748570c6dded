"""Captured, edited and replayed adverts against both CARP modes.

From the client namespace (anyone on the LAN segment) the test captures
fw1's real advert off the wire, edits the fields CARP v2's HMAC leaves out
(advbase, advskew, demote: advbase 0, demote 255, bow-out), fixes the
checksum and sends it back, from its own address and with fw1's address
forged (an IP_HDRINCL raw socket). In compatible mode carpd obeys the edits,
as ucarp and OpenBSD do: that is CARP's design (docs/carp.md, "Trust
models"). In hardened mode every edit is dropped as bad_hmac, a replay as
replay / stale, a v2 advert as unhardened, and the roles stay put; a restart
of fw1 is still accepted by fw2 and node loss still fails over.
"""
from __future__ import annotations

import socket
import struct
import time

from carp_helpers import drops, fast, settled, transitions, vip, wait_settled
from test_carp_adverts import GROUP4, Injector, csum
from fwcluster.carp.core import hardened, wire
from tests.labkit import CLIENT4, LAN_VIP4, Lab

SENT = 3  # copies of each forged packet


def resum(pkt: bytes) -> bytes:
    """The packet with its Internet checksum made right again (RFC 1071)."""
    pkt = pkt[:6] + b"\0\0" + pkt[8:]
    return pkt[:6] + struct.pack("!H", csum(pkt)) + pkt[8:]


def edit(pkt: bytes, advskew=None, demote=None, advbase=None) -> bytes:
    b = bytearray(pkt)
    for index, value in ((2, advskew), (4, demote), (5, advbase)):
        if value is not None:
            b[index] = value
    return resum(bytes(b))


EDITS = {  # what each edit would do if it were believed
    "advbase 0": dict(advbase=0, advskew=0),       # a better master: fw1 yields, fw2 waits
    "demote 255": dict(demote=255),                 # fw2 claims: roles flap
    "bow-out": dict(advbase=255, advskew=255),      # fw2 claims at once
}


class Segment(Injector):
    """test_carp_adverts' injector (capture4: fw1's adverts off the wire),
    plus a raw IP socket that sends with any source address."""

    def __init__(self, lab: Lab):
        super().__init__(lab)
        self.raw = lab.socket("client", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        self.raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(CLIENT4))
        self.raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)

    def send(self, payload: bytes, source: str = CLIENT4) -> None:
        """One datagram to the CARP group, TTL 255, from source (the kernel
        fills in length, id and header checksum)."""
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 0, 0, 0, 255, 112, 0,
                           socket.inet_aton(source), socket.inet_aton(GROUP4))
        self.raw.sendto(head + payload, (GROUP4, 0))

    def close(self) -> None:
        self.raw.close()
        super().close()


def start(carp_lab, mode: str):
    lab = carp_lab(members=2, ipv6=False, carp={"mode": mode}, **fast())
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1")
    return lab, Segment(lab)


def grown(lab, member, before, reasons) -> int:
    now = drops(lab, member)
    return sum(now.get(r, 0) - before.get(r, 0) for r in reasons)


def test_hardened_mode_drops_edited_replayed_and_v2_adverts_and_roles_stay(carp_lab):
    lab, seg = start(carp_lab, "hardened")
    try:
        captured = seg.capture4(lab.addr4("fw1"), 1)
        assert captured[0] >> 4 == hardened.VERSION  # a hardened advert on the wire (both members speak it)
        trans = {m: transitions(lab, m) for m in lab.members}
        before = {m: drops(lab, m) for m in lab.members}
        forged = 0
        for _ in range(SENT):
            for fields in EDITS.values():
                for source in (lab.addr4("fw1"), CLIENT4):
                    seg.send(edit(captured, **fields), source)
                    forged += 1
            seg.send(captured, CLIENT4)  # as it was, from another source: bad_hmac too
            forged += 1
            time.sleep(0.02)
        ok = lab.wait_for(lambda: grown(lab, "fw2", before["fw2"], ["bad_hmac"]) >= forged, 3)
        assert ok, (forged, drops(lab, "fw2"), before["fw2"])
        # fw1 hears the ones forged as coming from the client (the kernel
        # drops packets claiming fw1's own address before carpd sees them).
        assert grown(lab, "fw1", before["fw1"], ["bad_hmac"]) >= forged // 2
        # The captured advert again, exactly, from fw1's address: fw2 saw
        # its counter already (replay) or it fell behind the window (stale).
        for _ in range(SENT):
            seg.send(captured, lab.addr4("fw1"))
        assert lab.wait_for(lambda: grown(lab, "fw2", before["fw2"], ["replay", "stale"]) >= SENT, 3)
        # A CARP v2 advert with the right passphrase: not accepted here.
        v2 = wire.encode(wire.Auth(lab.secret.encode(), 1, [LAN_VIP4], cookie=7), 0, 1)
        for _ in range(SENT):
            seg.send(v2)
        assert lab.wait_for(lambda: all(grown(lab, m, before[m], ["unhardened"]) >= SENT
                                        for m in lab.members), 3)
        time.sleep(1.0)  # beyond fw2's master-down time (781 ms)
        assert settled(lab, "fw1")
        assert {m: transitions(lab, m) for m in lab.members} == trans
        assert vip(lab.status("fw2"), 1).get("master") == lab.addr4("fw1")
        st = lab.fwctl("fw2", "status")  # and fwctl shows the counts per vip
        assert {"unhardened", "stale"} <= set(st["vips"][0]["counters"]["drops"])
    finally:
        seg.close()


def test_compatible_mode_obeys_the_same_edits(carp_lab):
    """The difference documented in docs/carp.md: in compatible mode an
    edited capture is authentic as far as CARP v2 can tell."""
    lab, seg = start(carp_lab, "compatible")
    try:
        captured = seg.capture4(lab.addr4("fw1"), 1)
        before = drops(lab, "fw2")
        trans = transitions(lab, "fw2")[1]
        # advbase 0, advskew 0 from the client: fw2 now takes the client for
        # its master (fw1 would yield too, were the cookie not its own).
        seen = False
        end = time.monotonic() + 3
        while time.monotonic() < end and not seen:
            seg.send(edit(captured, **EDITS["advbase 0"]))
            time.sleep(0.02)
            seen = vip(lab.status("fw2"), 1).get("master") == CLIENT4
        assert seen, lab.status("fw2")
        for name in ("demote 255", "bow-out"):
            wait_settled(lab, "fw1")
            t0 = transitions(lab, "fw2")[1]
            seg.send(edit(captured, **EDITS[name]), lab.addr4("fw1"))
            # fw2 claims MASTER on the edited advert (and yields on fw1's next one).
            assert lab.wait_for(lambda: transitions(lab, "fw2")[1] > t0, 3), name
        assert transitions(lab, "fw2")[1] >= trans + 2
        assert grown(lab, "fw2", before, ["bad_hmac"]) == 0
        wait_settled(lab, "fw1")
    finally:
        seg.close()


def test_hardened_failover_restart_accepted_old_boot_refused(carp_lab):
    lab, seg = start(carp_lab, "hardened")
    try:
        old = seg.capture4(lab.addr4("fw1"), 1)
        boot_before = int((lab.state_dir("fw1") / "carp-boot").read_text())
        lab.node_loss("fw1")
        wait_settled(lab, "fw2", timeout=5, members=["fw2"])
        # fw1 comes back with a new boot id; fw2 believes its adverts (it
        # yields to the better member: preemption) though the counters
        # restart from 1 in the new boot.
        lab.node_return("fw1")
        lab.start_carpd("fw1")
        wait_settled(lab, "fw1", timeout=8)
        assert int((lab.state_dir("fw1") / "carp-boot").read_text()) > boot_before
        new = seg.capture4(lab.addr4("fw1"), 1)
        assert new[8:12] > old[8:12]  # boot id, the counter's high half
        # A recording of fw1's previous life: stale, and nothing moves.
        trans = {m: transitions(lab, m) for m in lab.members}
        before = drops(lab, "fw2")
        for _ in range(SENT):
            seg.send(old, lab.addr4("fw1"))
            seg.send(edit(old, **EDITS["bow-out"]), lab.addr4("fw1"))
            time.sleep(0.02)
        assert lab.wait_for(lambda: grown(lab, "fw2", before, ["stale"]) >= SENT, 3), drops(lab, "fw2")
        assert grown(lab, "fw2", before, ["bad_hmac"]) >= SENT
        time.sleep(1.0)
        assert settled(lab, "fw1")
        assert {m: transitions(lab, m) for m in lab.members} == trans
    finally:
        seg.close()


def test_hardened_member_and_compatible_member_do_not_mix(carp_lab):
    """A half-migrated cluster: each drops the other's adverts by a named
    reason (bad_version / unhardened) and both claim: the operator sees why."""
    lab = carp_lab(members=2, ipv6=False, carp={"mode": "hardened"}, **fast())
    lab.start_carpd("fw1")
    lab.write_config(carp={"mode": "compatible"})  # read by fw2 only: fw1 has started
    lab.start_carpd("fw2")
    ok = lab.wait_for(lambda: drops(lab, "fw2").get("bad_version", 0) >= 3
                      and drops(lab, "fw1").get("unhardened", 0) >= 1, 5)
    assert ok, (drops(lab, "fw1"), drops(lab, "fw2"))


# --- a restarted receiver and a recording of a dead master (issue 21 #2) ------------

def record(seg: Segment, source: str, vhid: int, until) -> list[tuple[float, bytes]]:
    """source's adverts of vhid seen from the client, (time, payload), from
    now until until() returns true for one, none apart by more than 3 s."""
    out: list[tuple[float, bytes]] = []
    while not out or not until(out[-1][1]):
        out.append((time.monotonic(), seg.capture4(source, vhid)))
    return out


def recorded_then_dead(carp_lab):
    """A hardened pair; a recording of fw1's adverts (4 s of them, then its
    bow-out as carpd stops); fw2 master; then fw2's carpd restarted (its
    windows were in memory). Returns the lab, the injector, the recording
    and when fw2's restarted carpd answered."""
    import threading
    lab, seg = start(carp_lab, "hardened")
    took: list = []
    t = threading.Thread(target=lambda: took.extend(
        record(seg, lab.addr4("fw1"), 1, lambda p: p[5] == wire.BOW_OUT)))
    t.start()
    time.sleep(4.0)
    lab.stop_daemon("fw1", "carpd")          # SIGTERM: the bow-out, then silence
    t.join(12)
    assert took and took[-1][1][5] == wire.BOW_OUT and len(took) >= 10, len(took)
    wait_settled(lab, "fw2", members=["fw2"])
    lab.stop_daemon("fw2", "carpd")
    lab.start_carpd("fw2")
    return lab, seg, took, time.monotonic()


def claim_bound(lab) -> float:
    """The longest a starting member waits before its first claim (it has
    heard no master: machine.master_wait assumes the slowest), plus MARGIN."""
    from carp_helpers import MARGIN
    from fwcluster.carp.core import machine
    return machine.master_wait(lab.vips[0].get("advbase", 1), lab.advskews["fw2"], None) + MARGIN


def claimed_at(lab, member: str, timeout: float) -> float | None:
    ok = lab.wait_for(lambda: lab.states(1, [member]) == {member: "MASTER"}, timeout, 0.02)
    return time.monotonic() if ok else None


def test_hardened_restarted_backup_claims_on_time_through_a_recording(carp_lab):
    """fw2's windows lived in memory: restarted, it took a recording of the
    dead fw1, replayed in order at its pace, as a live master, and waited
    as long as the recording lasted. Now each advert is `unproven` (fw2 asks
    fw1 to prove it is live; nobody answers) and fw2 claims at its
    master-down."""
    lab, seg, took, started = recorded_then_dead(carp_lab)
    try:
        adverts = [(at, p) for at, p in took if p[5] != wire.BOW_OUT]
        t0 = adverts[0][0]
        for at, payload in adverts:
            time.sleep(max(0.0, (at - t0) - (time.monotonic() - started)))
            seg.send(payload, lab.addr4("fw1"))
            if lab.states(1, ["fw2"]) == {"fw2": "MASTER"}:
                break
        bound = claim_bound(lab)
        at = claimed_at(lab, "fw2", max(0.0, started + bound - time.monotonic()))
        assert at is not None, (f"fw2 did not claim within {bound:.2f} s of its restart "
                                f"through {len(adverts)} recorded adverts", drops(lab, "fw2"))
        assert drops(lab, "fw2").get("unproven", 0) >= 1
    finally:
        seg.close()


def test_hardened_restarted_backup_ignores_a_recorded_bow_out(carp_lab):
    """A recorded bow-out made a restarted fw2 claim at once; now it is
    `unproven` and fw2 claims at its master-down, not before."""
    lab, seg, took, started = recorded_then_dead(carp_lab)
    try:
        bow_out = took[-1][1]
        seg.send(bow_out, lab.addr4("fw1"))
        assert claimed_at(lab, "fw2", 0.3) is None, "fw2 claimed on a recorded bow-out"
        assert drops(lab, "fw2").get("unproven", 0) >= 1, drops(lab, "fw2")
        assert claimed_at(lab, "fw2", max(0.0, started + claim_bound(lab) - time.monotonic()))
    finally:
        seg.close()
