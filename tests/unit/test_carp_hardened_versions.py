"""Hardened CARP versions 4 and 5 (issue 23): a member speaks both, sends a
vhid's adverts at the newest every member heard on it speaks, and a build
capped to 4 reads and writes exactly what the previous release did."""
from __future__ import annotations

import pytest

from fwcluster.carp.core import hardened, modes, wire
from fwcluster.core import versions

SECRET = b"correct horse battery staple"
FW1, FW2, FW3 = "192.0.2.11", "192.0.2.12", "192.0.2.13"
VIP = "192.0.2.1"
# hardened.encode of the previous release (commit 2cf673e), computed there:
# counter 5<<32|1 from FW1, advbase 1, advskew 0, demote 0, vhid 7, cluster "edge"
PREVIOUS_RELEASE_ADVERT = bytes.fromhex(
    "4107000700013e370000000500000001094dd551d82fb286a1c5e1ad796ef9bc85f69ac8")


def member(boot: int, speaks=hardened.SPEAKS) -> tuple[modes.Hardened, dict]:
    nonces = iter(range(boot << 16, (boot + 1) << 16))
    c = modes.Hardened("edge", hardened.Counter(boot, lambda: boot + 1000),
                       nonce=lambda: next(nonces), speaks=speaks)
    return c, {7: c.auth(SECRET, 7, [VIP], 0)}


def send(codec, auths, source):
    return codec.encode(auths[7], 1, 0, 0, source)


def test_the_range_is_the_one_versions_publishes():
    assert hardened.SPEAKS == versions.SPEAKS["carp_hardened"] == (4, 5)
    assert versions.speaks("carp_hardened", "previous") == (4, 4)


@pytest.mark.parametrize("speaks, heard, expected", [
    ((4, 5), [], 5),          # nobody heard yet: our newest
    ((4, 5), [5, 5], 5),
    ((4, 5), [5, 4], 4),      # one member of the previous release pulls the vhid down
    ((4, 4), [5], 4),         # a capped build never goes above its newest
    ((4, 5), [3], 4),         # never below our oldest (a 3 could not be read anyway)
])
def test_send_version_is_the_newest_every_member_heard_speaks(speaks, heard, expected):
    assert hardened.send_version(speaks, heard) == expected


def test_version_4_adverts_are_byte_for_byte_the_previous_releases():
    c, auths = member(5)
    c.heard.note((bytes(4), 7), 4)  # someone at 4: this vhid goes out at 4
    assert c.version(7) == 4
    assert send(c, auths, FW1) == PREVIOUS_RELEASE_ADVERT


def test_a_previous_release_advert_opens_a_window_without_proof():
    """Version 4's rule: the first authentic advert opens the sender's
    window; version 5 waits for a proof (unproven)."""
    new, auths = member(9)
    got = new.decode(PREVIOUS_RELEASE_ADVERT, 255, FW1, auths, FW2)
    assert isinstance(got, wire.Advert) and got.counter == (5 << 32) | 1
    assert new.decode(PREVIOUS_RELEASE_ADVERT, 255, FW1, auths, FW2) == wire.Drop("replay", 7)
    assert new.version(7) == 4 and new.peer_versions(7) == {FW1: 4}
    other, theirs = member(3)
    assert new.decode(send(other, theirs, FW3), 255, FW3, auths, FW2) == wire.Drop("unproven", 7)


def test_version_4_has_no_solicitation_and_no_proof():
    c, auths = member(5)
    v4 = member(6, speaks=(4, 4))
    ask = hardened.encode_solicit(auths[7], 77, FW1)
    relabelled = bytearray(ask)
    relabelled[0] = 0x42
    pkt = bytes(relabelled[:6]) + b"\0\0" + bytes(relabelled[8:])
    pkt = pkt[:6] + wire.checksum(pkt).to_bytes(2, "big") + pkt[8:]
    assert v4[0].decode(pkt, 255, FW1, v4[1], FW2) == wire.Drop("bad_type", 7)
    with pytest.raises(ValueError):
        hardened.encode(auths[7], 1 << 32 | 1, FW1, 1, 0, echo=5, version=4)


def test_a_capped_member_reads_only_4_and_a_new_one_falls_back_to_it():
    """The new member listens first (a backup waits master-down): it hears
    the capped master's v4 advert and its own first advert is v4, which the
    capped member reads; a v5 advert would have been bad_version there."""
    new, mine = member(9)
    capped, theirs = member(5, speaks=(4, 4))
    assert capped.version(7) == 4
    early = send(new, mine, FW1)
    assert early[0] >> 4 == 5
    assert capped.decode(early, 255, FW1, theirs, FW2) == wire.Drop("bad_version", 7)
    assert isinstance(new.decode(send(capped, theirs, FW2), 255, FW2, mine, FW1), wire.Advert)
    assert new.version(7) == 4
    later = send(new, mine, FW1)
    assert later[0] >> 4 == 4
    assert isinstance(capped.decode(later, 255, FW1, theirs, FW2), wire.Advert)
    # the capped build never probes nor proves, and a new member answers no
    # solicitation at 4 (there is no v4 proof; the asker reads our v4 adverts)
    assert capped.probe(theirs[7], FW1, FW2, 0.0) is None
    ask = hardened.encode_solicit(theirs[7], 99, FW3)   # a third, new member asks
    assert isinstance(new.decode(ask, 255, FW3, mine, FW1), hardened.Solicit)
    assert new.version(7) == 4
    assert new.prove(mine[7], wire.Advert(7, 1, 0, 0, 0), FW1,
                     hardened.Solicit(7, 99), FW3, 0.0) is None


def test_probes_lift_a_vhid_back_to_5_once_every_member_heard_speaks_it():
    """fw1 and fw2 are new, fw3 runs the previous release: all send at 4.
    fw2 hears fw1's v4 adverts and probes it (a v5 solicitation): fw1 learns
    fw2 speaks 5 but stays at 4 for fw3. fw3 is upgraded (same address) and
    probes fw1 too: fw1 climbs to 5, and fw2 follows on fw1's next advert."""
    fw1, a1 = member(1)
    fw2, a2 = member(2)
    old3, a3 = member(3, speaks=(4, 4))
    fw1.decode(send(old3, a3, FW3), 255, FW3, a1, FW1)
    assert fw1.version(7) == 4
    assert isinstance(fw2.decode(send(fw1, a1, FW1), 255, FW1, a2, FW2), wire.Advert)
    assert fw2.version(7) == 4
    probe = fw2.probe(a2[7], FW1, FW2, now=0.0)
    assert probe is not None and probe[0] == 0x52
    assert fw2.probe(a2[7], FW1, FW2, now=hardened.PROBE_GAP - 0.01) is None  # bounded
    assert old3.decode(probe, 255, FW2, a3, FW3) == wire.Drop("bad_version", 7)
    assert isinstance(fw1.decode(probe, 255, FW2, a1, FW1), hardened.Solicit)
    assert fw1.version(7) == 4 and fw1.peer_versions(7) == {FW3: 4, FW2: 5}

    new3, b3 = member(30)   # fw3 upgraded: it hears fw1 at 4, probes it
    assert isinstance(new3.decode(send(fw1, a1, FW1), 255, FW1, b3, FW3), wire.Advert)
    fw1.decode(new3.probe(b3[7], FW1, FW3, now=1.0), 255, FW3, a1, FW1)
    assert fw1.version(7) == 5
    up = send(fw1, a1, FW1)
    assert up[0] >> 4 == 5
    assert isinstance(fw2.decode(up, 255, FW1, a2, FW2), wire.Advert)  # its window is open
    assert fw2.version(7) == 5 and fw2.probe(a2[7], FW1, FW2, now=50.0) is None


def test_a_sender_heard_at_4_is_not_forgotten_by_time():
    """A backup of the previous release is silent: forgetting it would make
    the master send adverts it cannot read, and it would claim the vip."""
    new, mine = member(9)
    capped, theirs = member(5, speaks=(4, 4))
    new.decode(send(capped, theirs, FW2), 255, FW2, mine, FW1)
    assert new.version(7) == 4
    assert new.probe(mine[7], FW2, FW1, now=1e6) is not None and new.version(7) == 4


def test_versions_are_per_vhid_and_an_unheard_vhid_follows_the_others():
    """A failover group's vip is claimed on its sibling's advert (before
    one of its own arrives): its first advert must already be readable."""
    new, mine = member(9)
    new.heard.note((bytes(4), 7), 4)
    assert new.version(7) == 4 and new.version(8) == 4   # 8: nobody heard there yet
    new.heard.note((bytes(4), 8), 5)
    assert new.version(7) == 4 and new.version(8) == 5


def test_a_member_syncd_heard_at_4_pulls_every_vhid_down_before_it_sends_anything():
    """A rolled-back backup is silent (it cannot read 5, so it hears no
    master): syncd's word that it speaks 4 makes the master's adverts on
    every vhid readable to it before its master-down, without a claim."""
    new, mine = member(9)
    capped, theirs = member(5, speaks=(4, 4))
    assert new.version(7) == 5
    assert new.tell("fw2", 4) and not new.tell("fw2", 4)     # told once: no change the second time
    assert new.version(7) == new.version(8) == 4
    assert capped.decode(send(new, mine, FW1), 255, FW1, theirs, FW2).vhid == 7   # it reads the master
    assert new.told() == {"fw2": 4}
    assert new.tell("fw2", 5)                                  # upgraded again: climbs back
    assert new.version(7) == 5
    assert new.tell("fw2", None) and new.told() == {}
    new.tell("fw2", 4)
    new.tell("fw3", 4)
    new.keep_told({"fw3"})                                     # a reload without fw2
    assert new.told() == {"fw3": 4}


def test_compatible_mode_has_no_version_to_be_told():
    c = modes.Compatible()
    assert not c.tell("fw2", 4) and c.told() == {} and c.version(7) is None
