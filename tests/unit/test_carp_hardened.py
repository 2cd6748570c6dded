"""Hardened CARP adverts (fwcluster.carp.core.hardened, modes): every field
authenticated, source bound, counters replay-checked per sender; a restart
is accepted, a recording of an older boot is not; garbage never raises."""
from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from fwcluster.carp.core import hardened, machine, modes, wire
from fwcluster.core import config

SECRET = b"correct horse battery staple"
FW1, FW2, OTHER = "192.0.2.11", "192.0.2.12", "192.0.2.99"
VIP = "192.0.2.1"


def auth(vhid=7, secret=SECRET, cluster="edge", addresses=(VIP,)):
    return hardened.Auth(hardened.key(secret, cluster), vhid, addresses)


def advert(counter=(5 << 32) | 1, source=FW1, advbase=1, advskew=0, demote=0, a=None):
    return hardened.encode(a or auth(), counter, source, advbase, advskew, demote)


def proven(*sources, vhids=(7, 8)) -> hardened.ReplayWindows:
    """Windows of senders that proved they are live (at counter 0)."""
    w = hardened.ReplayWindows()
    for s in sources or (FW1, FW2):
        for v in vhids:
            w.prove((ipaddress.ip_address(s).packed, v), 0)
    return w


def receive(pkt, source=FW1, windows=None, ttl=255, own=FW2, a=None):
    windows = proven() if windows is None else windows
    return hardened.decode(pkt, ttl, source, {7: a or auth()}, windows, own)


def resum(pkt: bytes) -> bytes:
    pkt = pkt[:6] + b"\0\0" + pkt[8:]
    return pkt[:6] + struct.pack("!H", wire.checksum(pkt)) + pkt[8:]


def edited(index: int, value: int) -> bytes:
    """An advert with one byte changed and the checksum fixed up, as an
    attacker who captured it would send it."""
    b = bytearray(advert())
    b[index] = value
    return resum(bytes(b))


def test_layout_is_36_bytes_version_5_valid_checksum():
    pkt = advert(counter=0x0000000A_00000003, advbase=2, advskew=100, demote=32)
    assert len(pkt) == wire.HEADER_LEN
    assert pkt[0] == 0x51 and pkt[1] == 7 and pkt[2] == 100 and pkt[3] == 7
    assert pkt[4] == 32 and pkt[5] == 2
    assert pkt[8:16] == bytes.fromhex("0000000a00000003")
    assert wire.checksum(pkt) == 0


def test_mac_covers_every_field_source_and_vip():
    import hashlib
    import hmac
    pkt = advert(counter=9, advbase=1, advskew=3, demote=4)
    k = hardened.key(SECRET, "edge")
    msg = pkt[:6] + pkt[8:16] + bytes([4, 192, 0, 2, 11]) + bytes([192, 0, 2, 1])
    assert pkt[16:] == hmac.new(k, msg, hashlib.sha256).digest()[:20]


def test_key_is_hkdf_with_its_own_label():
    from syncd.core import keys
    k = hardened.key(SECRET, "edge")
    assert len(k) == 32
    assert k != keys.sync_key(SECRET, "edge")
    assert k != hardened.key(SECRET, "other")   # bound to the cluster
    assert k != hardened.key(SECRET + b"!", "edge")
    assert k != SECRET[:20]                     # never the v2 key


@pytest.mark.parametrize("advbase,advskew,demote", [(0, 1, 0), (1, 0, 0), (254, 254, 255), (3, 17, 240)])
def test_round_trip(advbase, advskew, demote):
    got = receive(advert(counter=77, advbase=advbase, advskew=advskew, demote=demote))
    assert got == wire.Advert(7, advbase, advskew, demote, 77)


# Every byte an attacker might edit, each to the value that would hurt most.
EDITS = {
    "advbase 0 (the master yields)": (5, 0),
    "advbase 200 (the backup claims)": (5, 200),
    "demote 255 (roles flap)": (4, 255),
    "advskew 1 (better timing)": (2, 1),
    "bow-out advbase": (5, wire.BOW_OUT),
    "vhid": (1, 8),
    "counter high": (8, 0x7F),
    "counter low": (15, 0xEE),
    "mac": (35, 0x00),
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_every_edited_field_is_dropped(name):
    index, value = EDITS[name]
    pkt = edited(index, value)
    assert pkt != advert()
    got = receive(pkt, a=auth())
    assert isinstance(got, wire.Drop), name
    assert got.reason in ("bad_hmac", "unknown_vhid"), got


def test_bow_out_forged_from_a_capture_is_dropped():
    b = bytearray(advert())
    b[2] = b[5] = wire.BOW_OUT
    assert receive(resum(bytes(b))) == wire.Drop("bad_hmac", 7)


def test_the_same_bytes_from_another_source_are_dropped():
    # Replayed from the attacker's own address: the window is keyed by the
    # source, so the source must be authentic.
    assert receive(advert(source=FW1), source=OTHER) == wire.Drop("bad_hmac", 7)


def test_other_secret_cluster_or_vip_is_bad_hmac():
    pkt = advert()
    assert receive(pkt, a=auth(secret=b"guess")) == wire.Drop("bad_hmac", 7)
    assert receive(pkt, a=auth(cluster="other")) == wire.Drop("bad_hmac", 7)
    assert receive(pkt, a=auth(addresses=("192.0.2.2",))) == wire.Drop("bad_hmac", 7)


def test_replay_within_the_window_is_dropped():
    w = proven()
    pkt = advert(counter=(5 << 32) | 10)
    assert isinstance(receive(pkt, windows=w), wire.Advert)
    assert receive(pkt, windows=w) == wire.Drop("replay", 7)


def test_late_advert_within_the_window_is_accepted_once():
    w = proven()
    assert isinstance(receive(advert(counter=100), windows=w), wire.Advert)
    assert isinstance(receive(advert(counter=90), windows=w), wire.Advert)
    assert receive(advert(counter=90), windows=w) == wire.Drop("replay", 7)
    assert receive(advert(counter=100 - hardened.WINDOW), windows=w) == wire.Drop("stale", 7)


def test_restart_is_accepted_and_the_old_boot_refused():
    w = proven()
    old = [advert(counter=(5 << 32) | n) for n in range(1, 2000)]
    for pkt in old[:1500]:
        assert isinstance(receive(pkt, windows=w), wire.Advert)
    # The sender restarts: boot 6, sequence from 1 again.
    assert isinstance(receive(advert(counter=(6 << 32) | 1), windows=w), wire.Advert)
    assert isinstance(receive(advert(counter=(6 << 32) | 2), windows=w), wire.Advert)
    # A recording of the old boot, even of adverts this receiver never saw.
    for pkt in (old[0], old[1498], old[1700]):
        assert receive(pkt, windows=w) == wire.Drop("stale", 7)


def test_windows_are_per_source_and_vhid():
    w = proven()
    assert isinstance(receive(advert(counter=50, source=FW1), source=FW1, windows=w), wire.Advert)
    # fw2's counters are its own: a lower one is fine.
    assert isinstance(receive(advert(counter=3, source=FW2), source=FW2, own=FW1, windows=w),
                      wire.Advert)
    a8 = auth(vhid=8)
    got = hardened.decode(advert(counter=3, a=a8), 255, FW1, {8: a8}, w, FW2)
    assert isinstance(got, wire.Advert)


def test_own_advert_sent_back_is_a_replay():
    assert receive(advert(source=FW1), source=FW1, own=FW1) == wire.Drop("replay", 7)
    v6 = auth(addresses=("2001:db8:1::1",))
    pkt = advert(source="2001:db8:1::11", a=v6)
    assert receive(pkt, source="2001:db8:1::11", own="2001:db8:1:0::11", a=v6) == \
        wire.Drop("replay", 7)


def test_a_compatible_advert_is_unhardened_and_ours_is_bad_version_to_v2():
    v2 = wire.encode(wire.Auth(SECRET, 7, [VIP], 1), 0, 0, 0)
    assert receive(v2) == wire.Drop("unhardened", 7)
    # What a compatible-mode member (or ucarp, OpenBSD: same check, same
    # order) makes of a hardened advert: a clean bad_version, not a misread.
    assert wire.decode(advert(), 255, {7: wire.Auth(SECRET, 7, [VIP], 1)}) == \
        wire.Drop("bad_version", 7)


@pytest.mark.parametrize("reason,pkt,ttl", [
    ("bad_ttl", lambda: advert(), 64),
    ("truncated", lambda: advert()[:35], 255),
    ("bad_checksum", lambda: advert()[:6] + b"\x12\x34" + advert()[8:], 255),
    ("bad_version", lambda: edited(0, 0x61), 255),
    ("bad_hmac", lambda: edited(0, 0x41), 255),   # a v5 advert relabelled v4: the version is MACed
    ("bad_type", lambda: edited(0, 0x53), 255),
    ("bad_hmac", lambda: edited(0, 0x52), 255),   # an advert turned solicitation
    ("unknown_vhid", lambda: advert(a=auth(vhid=9)), 255),
    ("bad_authlen", lambda: edited(3, 6), 255),
    ("bad_authlen", lambda: resum(advert() + b"\0\0"), 255),
])
def test_form_drops(reason, pkt, ttl):
    got = receive(pkt(), ttl=ttl)
    assert got == wire.Drop(reason, got.vhid)


def test_counter_sequence_and_renewal():
    boots = iter([9, 3])  # a renew that went backwards (lost state) still moves up
    c = hardened.Counter(7, lambda: next(boots))
    assert [c.next() for _ in range(3)] == [(7 << 32) | 1, (7 << 32) | 2, (7 << 32) | 3]
    c.seq = hardened.SEQ_MAX
    assert c.next() == (9 << 32) | 1
    c.seq = hardened.SEQ_MAX
    assert c.next() == (10 << 32) | 1
    with pytest.raises(ValueError):
        hardened.Counter(0, lambda: 1)


def test_windows_are_bounded():
    w = hardened.ReplayWindows(senders=4)
    for i in range(10):
        w.prove((bytes([192, 0, 2, i]), 1), 4)
        assert w.admit((bytes([192, 0, 2, i]), 1), 5) is None
    assert len(w._w) == 4 and w.top((bytes([192, 0, 2, 9]), 1)) == 5
    assert w.top((bytes([192, 0, 2, 0]), 1)) == 0
    assert w.admit((bytes([192, 0, 2, 0]), 1), 6) == "unproven"   # dropped: must prove again


def test_hardened_codec_needs_a_source_and_keeps_the_counter_across_rekey():
    codec = modes.Hardened("edge", hardened.Counter(5, lambda: 6))
    a = codec.auth(SECRET, 7, [VIP], cookie=1)
    assert codec.encode(a, 1, 0, 0, None) is None
    first = codec.encode(a, 1, 0, 0, FW1)
    rekeyed = codec.auth(b"new secret", 7, [VIP], cookie=1)
    second = codec.encode(rekeyed, 1, 0, 0, FW1)
    assert first[8:16] < second[8:16]
    peer = modes.Hardened("edge", hardened.Counter(1, lambda: 2), proven(FW1))
    assert isinstance(peer.decode(first, 255, FW1, {7: peer.auth(SECRET, 7, [VIP], 2)}, FW2),
                      wire.Advert)


def test_compatible_codec_is_wire_v2():
    codec = modes.Compatible()
    a = codec.auth(SECRET, 7, [VIP], cookie=22)
    assert codec.encode(a, 1, 0, 0, None) == wire.encode(a, 1, 0, 0)
    mine = codec.auth(SECRET, 7, [VIP], cookie=11)
    assert codec.decode(wire.encode(a, 1, 0, 0), 255, OTHER, {7: mine}, FW1) == \
        wire.Advert(7, 1, 0, 0, 22)


def test_garbage_and_mutations_never_raise():
    rng = random.Random(1234)
    w = proven()
    good = advert()
    auths = {v: auth(vhid=v) for v in range(256)}
    for i in range(20000):
        if i % 2:
            pkt = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        else:
            b = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.getrandbits(8)
            pkt = resum(bytes(b)) if rng.random() < 0.8 else bytes(b)
        source = rng.choice([FW1, "2001:db8::1", "not an address", ""])
        got = hardened.decode(pkt, rng.choice([255, 255, 64]), source, auths, w, FW2)
        assert isinstance(got, (wire.Drop, wire.Advert))
        if isinstance(got, wire.Advert):
            assert pkt == good and source == FW1  # only the untouched advert, once
    assert set(wire.DROP_REASONS) >= {"unhardened", "stale"}


def test_config_mode_key():
    import tomllib
    from pathlib import Path
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "cluster.toml"
    data = tomllib.loads(example.read_text())
    assert config.parse(data, "c.toml").carp.mode == "hardened"  # unless a ucarp peer needs v2
    for mode in config.CARP_MODES:
        assert config.parse({**data, "carp": {"mode": mode}}, "c.toml").carp.mode == mode
    with pytest.raises(config.ConfigError) as e:
        config.parse({**data, "carp": {"mode": "strict"}}, "c.toml")
    assert e.value.key == "carp.mode" and "compatible, hardened" in e.value.reason


# --- liveness: a receiver that starts empty (issue 21 #2) -------------------------------

def pair():
    """A master's codec (fw1) and a freshly started receiver's (fw2)."""
    nonces = iter(range(1000, 2000))
    master = modes.Hardened("edge", hardened.Counter(5, lambda: 6))
    receiver = modes.Hardened("edge", hardened.Counter(9, lambda: 10), nonce=lambda: next(nonces))
    return master, receiver, {7: master.auth(SECRET, 7, [VIP], 0)}, {7: receiver.auth(SECRET, 7, [VIP], 0)}


def test_a_restarted_receiver_takes_no_recording_nor_a_recorded_bow_out():
    """Its windows were in memory only: a recording of a dead master's
    adverts, in order, held it as BACKUP for ever, and a recorded bow-out
    made it claim. Now each is `unproven` (and makes it solicit the sender,
    which, dead, never answers: the receiver claims at master-down)."""
    master, receiver, mine, theirs = pair()
    recording = [master.encode(mine[7], 1, 0, 0, FW1) for _ in range(50)]
    recording.append(master.encode(mine[7], wire.BOW_OUT, wire.BOW_OUT, 0, FW1))
    got = [receiver.decode(pkt, 255, FW1, theirs, FW2) for pkt in recording]
    assert got == [wire.Drop("unproven", 7)] * len(recording)


def test_a_live_master_proves_itself_and_its_recordings_become_stale():
    master, receiver, mine, theirs = pair()
    recording = [master.encode(mine[7], 1, 0, 0, FW1) for _ in range(10)]
    assert receiver.decode(recording[0], 255, FW1, theirs, FW2) == wire.Drop("unproven", 7)
    ask = receiver.solicit(theirs[7], FW1, FW2, now=0.0)
    assert ask is not None and len(ask) == 36 and ask[0] == 0x52
    assert receiver.solicit(theirs[7], FW1, FW2, now=0.05) is None    # one per CHALLENGE_GAP
    asked = master.decode(ask, 255, FW2, mine, FW1)
    assert asked == hardened.Solicit(7, 1000)
    proof = master.prove(mine[7], machine.SendAdvert(7, 1, 0, 0), FW1, asked, FW2, now=0.0)
    assert len(proof) == hardened.PROOF_LEN and master.prove(
        mine[7], machine.SendAdvert(7, 1, 0, 0), FW1, asked, FW2, now=0.01) is None
    assert isinstance(receiver.decode(proof, 255, FW1, theirs, FW2), wire.Advert)
    # all older than the proof: counted as seen (`replay`) or below the window (`stale`)
    assert {receiver.decode(p, 255, FW1, theirs, FW2).reason for p in recording} == {"replay"}
    assert isinstance(receiver.decode(master.encode(mine[7], 1, 0, 0, FW1), 255, FW1, theirs, FW2),
                      wire.Advert)


def test_a_proof_for_another_nonce_or_edited_opens_nothing():
    master, receiver, mine, theirs = pair()
    receiver.solicit(theirs[7], FW1, FW2, now=0.0)          # waits for nonce 1000
    advert = machine.SendAdvert(7, 1, 0, 0)
    old_proof = master.prove(mine[7], advert, FW1, hardened.Solicit(7, 999), FW2, now=0.0)
    assert receiver.decode(old_proof, 255, FW1, theirs, FW2) == wire.Drop("unproven", 7)
    good = master.prove(mine[7], advert, FW1, hardened.Solicit(7, 1000), "192.0.2.13", now=0.0)
    for i in (3, 36, 43):       # authlen, the echo: the MAC covers them
        b = bytearray(good)
        b[i] ^= 1
        assert receiver.decode(resum(bytes(b)), 255, FW1, theirs, FW2).reason in \
            ("bad_hmac", "bad_authlen")
    assert isinstance(receiver.decode(good, 255, FW1, theirs, FW2), wire.Advert)
    assert receiver.decode(good, 255, FW1, theirs, FW2) == wire.Drop("replay", 7)


def test_a_compatible_codec_neither_asks_nor_proves():
    codec = modes.Compatible()
    a = codec.auth(SECRET, 7, [VIP], 1)
    assert codec.solicit(a, FW1, FW2, 0.0) is None
    assert codec.prove(a, machine.SendAdvert(7, 1, 0, 0), FW2, hardened.Solicit(7, 1), FW1, 0.0) is None
