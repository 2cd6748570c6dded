"""Hostile adverts injected from the client namespace with a raw socket:
forged (bad HMAC), malformed and replayed adverts are dropped, counted by
reason, and change no state. The encoder here is written from the CARP v2
layout independently of fwcluster.carp.core.wire, on purpose."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import random
import socket
import struct
import time

import pytest

from carp_helpers import drops, fast, settled, transitions, vip, wait_settled
from tests.labkit import CLIENT4, LAN_VIP4, LAN_VIP6, Lab

GROUP4, GROUP6 = "224.0.0.18", "ff02::12"
PROTO = 112


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def advert(passphrase: bytes, vhid: int, vip: str, advbase=0, advskew=1, demote=0,
           counter=None, version=2, typ=1, authlen=7, good_checksum=True) -> bytes:
    """A CARP v2 advertisement: 8-byte header, 64-bit counter, HMAC-SHA1 over
    version, type, vhid, the virtual address and the counter."""
    counter = random.getrandbits(64) if counter is None else counter
    ctr = struct.pack("!Q", counter)
    msg = bytes((2, 1, vhid)) + ipaddress.ip_address(vip).packed + ctr
    md = hmac.new(passphrase[:20], msg, hashlib.sha1).digest()
    head = struct.pack("!BBBBBBH", (version << 4) | typ, vhid, advskew, authlen, demote, advbase, 0)
    pkt = head + ctr + md
    c = csum(pkt)
    if not good_checksum:
        c ^= 0x5A5A
    return pkt[:6] + struct.pack("!H", c) + pkt[8:]


class Injector:
    """Raw IP-protocol-112 sockets in the client namespace."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.s4 = lab.socket("client", socket.AF_INET, socket.SOCK_RAW, PROTO)
        self.s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(CLIENT4))
        self.s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        self.s6 = None
        if lab.ipv6:
            self.s6 = lab.socket("client", socket.AF_INET6, socket.SOCK_RAW, PROTO)
            self.s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            self.s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            self.ifindex = self._ifindex()

    def _ifindex(self) -> int:
        import json
        out = self.lab.run("client", ["ip", "-j", "link", "show", "dev", "eth0"]).stdout
        return json.loads(out)[0]["ifindex"]

    def send4(self, payload: bytes, ttl: int = 255) -> None:
        self.s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        self.s4.sendto(payload, (GROUP4, 0))

    def send6(self, payload: bytes) -> None:
        self.s6.sendto(payload, (GROUP6, 0, 0, self.ifindex))

    def capture4(self, source: str, vhid: int, timeout: float = 3.0) -> bytes:
        """The next advert of vhid sent by source, as received (CARP payload)."""
        s = self.lab.socket("client", socket.AF_INET, socket.SOCK_RAW, PROTO)
        with s:
            mreq = socket.inet_aton(GROUP4) + socket.inet_aton(CLIENT4)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data, (src, _) = s.recvfrom(2048)
                except socket.timeout:
                    break
                payload = data[(data[0] & 0x0F) * 4:]
                if src == source and len(payload) >= 2 and payload[1] == vhid:
                    return payload
        raise AssertionError(f"no advert of vhid {vhid} from {source} within {timeout} s")

    def close(self):
        self.s4.close()
        if self.s6:
            self.s6.close()


@pytest.fixture
def armed(carp_lab):
    # v2 adverts as ucarp and OpenBSD send them: compatible mode, said so
    # (hardened is the default; test_carp_edited_adverts covers it).
    lab = carp_lab(members=2, ipv6=True, carp={"mode": "compatible"}, **fast())
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1")
    inj = Injector(lab)
    yield lab, inj
    inj.close()


def snapshot(lab):
    return {m: (lab.states(1), transitions(lab, m), drops(lab, m)) for m in lab.members}


def assert_no_state_change(lab, before):
    for m in lab.members:
        states, trans, _ = before[m]
        assert lab.states(1) == states and transitions(lab, m) == trans, m
    assert settled(lab, "fw1")
    for m in lab.members:
        assert lab.daemon(m).poll() is None, f"carpd on {m} died"


def wait_drops(lab, members, reason, at_least, before):
    def enough():
        return all(drops(lab, m).get(reason, 0) - before[m][2].get(reason, 0) >= at_least
                   for m in members)
    ok = lab.wait_for(enough, 3, 0.05)
    assert ok, {m: (reason, drops(lab, m), before[m][2]) for m in members}


# Each would beat fw1 (advskew 50) if it were accepted: advbase 0, advskew 1.
N = 5


def test_forged_adverts_with_a_bad_hmac(armed):
    lab, inj = armed
    before = snapshot(lab)
    for _ in range(N):
        inj.send4(advert(b"not-the-secret", 1, LAN_VIP4))
        inj.send6(advert(b"not-the-secret", 3, LAN_VIP6))
        time.sleep(0.05)
    wait_drops(lab, lab.members, "bad_hmac", 2 * N, before)
    time.sleep(1.0)  # beyond fw2's master-down time (781 ms): nothing took over
    assert_no_state_change(lab, before)
    # ...and fwctl shows the count per vip.
    st = lab.fwctl("fw1", "status")
    per_vip = {v["vhid"]: v["counters"]["drops"]["bad_hmac"] for v in st["vips"]}
    assert per_vip[1] >= N and per_vip[3] >= N


@pytest.mark.parametrize("reason,make,ttl", [
    ("bad_ttl", lambda k: advert(k, 1, LAN_VIP4), 64),
    ("bad_checksum", lambda k: advert(k, 1, LAN_VIP4, good_checksum=False), 255),
    ("truncated", lambda k: advert(k, 1, LAN_VIP4)[:20], 255),
    ("bad_version", lambda k: advert(k, 1, LAN_VIP4, version=3), 255),
    ("bad_type", lambda k: advert(k, 1, LAN_VIP4, typ=2), 255),
    ("unknown_vhid", lambda k: advert(k, 77, LAN_VIP4), 255),
    ("bad_authlen", lambda k: advert(k, 1, LAN_VIP4, authlen=6), 255),
])
def test_malformed_adverts_are_dropped_by_reason(armed, reason, make, ttl):
    lab, inj = armed
    key = lab.secret.encode()
    before = snapshot(lab)
    for _ in range(N):
        inj.send4(make(key), ttl=ttl)
        time.sleep(0.02)
    wait_drops(lab, lab.members, reason, N, before)
    time.sleep(1.0)  # beyond fw2's master-down time
    assert_no_state_change(lab, before)


def test_replayed_own_advert_is_dropped(armed):
    lab, inj = armed
    captured = inj.capture4(lab.addr4("fw1"), 1)
    before = snapshot(lab)
    for _ in range(N):
        inj.send4(captured)
        time.sleep(0.02)
    # fw1 sees its own cookie come back from elsewhere: a replay.
    wait_drops(lab, ["fw1"], "replay", N, before)
    time.sleep(1.0)  # beyond fw2's master-down time
    assert_no_state_change(lab, before)


def test_random_garbage_never_hurts(armed):
    lab, inj = armed
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    before = snapshot(lab)
    sent = 200
    for i in range(sent):
        pkt = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        inj.send4(pkt)
        if i % 20 == 0:
            time.sleep(0.01)
    def total(m):  # replays are our own adverts' business, not garbage
        now, then = drops(lab, m), before[m][2]
        return sum(n - then.get(r, 0) for r, n in now.items() if r != "replay")
    assert lab.wait_for(lambda: all(total(m) >= sent for m in lab.members), 5), \
        {m: total(m) for m in lab.members}
    assert_no_state_change(lab, before)


def test_control_a_valid_better_advert_is_obeyed(armed):
    """The positive control of the tests above: the same injector with the
    right passphrase reaches carpd and moves the master. So the drops above
    are carpd's checks at work, not packets lost on the way."""
    lab, inj = armed
    key = lab.secret.encode()

    def client_is_master():
        v = vip(lab.status("fw1"), 1)
        return v.get("state") == "BACKUP" and v.get("master") == CLIENT4

    seen = False
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not seen:
        inj.send4(advert(key, 1, LAN_VIP4, advbase=0, advskew=1))
        time.sleep(0.05)
        seen = client_is_master()
    assert seen, lab.status("fw1")
    # The impostor falls silent: fw1 takes vhid 1 back after its master-down time.
    assert lab.wait_for(lambda: lab.vip_state("fw1", 1) == "MASTER", 5)
