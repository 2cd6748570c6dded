"""carpd's hardened mode in its shell: boot ids that only grow (persisted,
clock floor), the codec picked by [carp] mode, and packet accounting by
reason in a Carpd fed as its sockets would feed it."""
import asyncio
import dataclasses
import ipaddress
import logging
from pathlib import Path

import pytest

from fwcluster import configfile
from fwcluster.carp import bootid
from fwcluster.carp.core import hardened, machine, modes, wire
from fwcluster.carp.node import Carpd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"
SECRET = b"s3cret"
PEER = "192.0.2.12"


def make_cfg(tmp_path, mode):
    p = tmp_path / "cluster.toml"
    p.write_text(EXAMPLE.read_text() + f'\n[carp]\nsync_hold = 0\nmode = "{mode}"\n')
    cfg = configfile.load(p, "fw1")
    return dataclasses.replace(cfg, run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"))


def test_boot_ids_grow_from_start_to_start(tmp_path):
    d = str(tmp_path / "state")
    ids = [bootid.allocate(d, now=1000) for _ in range(3)]
    assert ids == [1000, 1001, 1002]  # same second: the file carries them up
    assert (Path(d) / bootid.BOOT_FILE).read_text() == "1002\n"
    assert bootid.allocate(d, now=5000) == 5000  # the clock moved on: it leads
    assert bootid.allocate(d, now=10) == 5001   # the clock went back: the file leads


@pytest.mark.parametrize("persisted", [hardened.BOOT_MAX, hardened.BOOT_MAX + 1, 1 << 40])
def test_boot_id_at_the_wire_limit_starts_afresh_not_pinned(tmp_path, caplog, persisted):
    d = tmp_path / "state"
    d.mkdir()
    (d / bootid.BOOT_FILE).write_text(f"{persisted}\n")
    with caplog.at_level(logging.WARNING, logger="carpd"):
        first = bootid.allocate(str(d), now=1000)
    second = bootid.allocate(str(d), now=1000)
    # a pinned id (2^32 - 1 on every start) would be `stale` to peers for ever
    assert (first, second) == (1000, 1001)
    assert "starting afresh" in caplog.text
    caplog.clear()
    (d / bootid.BOOT_FILE).write_text(f"{persisted}\n")
    assert 1 <= bootid.allocate(str(d), now=hardened.BOOT_MAX + 5) <= hardened.BOOT_MAX  # past 2106


def test_boot_id_survives_a_lost_or_broken_file_by_the_clock(tmp_path):
    d = tmp_path / "state"
    assert bootid.allocate(str(d), now=2000) == 2000
    (d / bootid.BOOT_FILE).unlink()               # /config wiped
    assert bootid.allocate(str(d), now=2500) == 2500
    (d / bootid.BOOT_FILE).write_text("garbage\n")
    assert bootid.allocate(str(d), now=3000) == 3000


def test_boot_id_when_state_dir_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert bootid.allocate(str(blocker / "state"), now=4000) == 4000  # warned, not fatal


def test_codec_follows_the_mode(tmp_path):
    assert isinstance(bootid.codec_for(make_cfg(tmp_path, "compatible")), modes.Compatible)
    codec = bootid.codec_for(make_cfg(tmp_path, "hardened"))
    assert isinstance(codec, modes.Hardened) and codec.counter.boot > 0
    again = bootid.codec_for(make_cfg(tmp_path, "hardened"))
    assert again.counter.boot > codec.counter.boot  # a restart: a higher boot id
    assert (tmp_path / "state" / bootid.BOOT_FILE).read_text() == f"{again.counter.boot}\n"


def receive(d: Carpd, packets) -> None:
    async def go():
        for payload, source in packets:
            d._packet(d.ifaces["lan0"], 4, payload, 255, source)
    asyncio.run(go())


def peer_advert(boot, seq, **fields):
    a = hardened.Auth(hardened.key(SECRET, "edge"), 1, ["192.0.2.1"])
    return hardened.encode(a, boot << 32 | seq, PEER, fields.get("advbase", 1),
                           fields.get("advskew", 100), fields.get("demote", 0))


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def test_hardened_carpd_counts_each_attack_by_reason(tmp_path):
    d = Carpd(make_cfg(tmp_path, "hardened"), "fw1", SECRET)
    d.codec.windows.prove((packed(PEER), 1), 7 << 32)   # the peer proved it is live
    good = peer_advert(7, 5)
    edited = bytearray(peer_advert(7, 6))
    edited[4] = 255  # demote 255, checksum fixed up
    edited[6:8] = b"\0\0"
    edited[6:8] = wire.checksum(bytes(edited)).to_bytes(2, "big")
    v2 = wire.encode(wire.Auth(SECRET, 1, ["192.0.2.1"], 99), 1, 100, 0)
    receive(d, [(good, PEER), (good, PEER), (bytes(edited), PEER), (v2, PEER),
                (peer_advert(7, 5), "192.0.2.66"),       # same bytes, another source
                (peer_advert(8, 1), PEER),               # the peer restarted
                (peer_advert(7, 9), PEER)])              # a recording of its last life
    c = d.vips[1].counters
    assert c["adverts_received"] == 2
    assert c["drops"] == {**{r: 0 for r in wire.DROP_REASONS}, "replay": 1, "bad_hmac": 2,
                          "unhardened": 1, "stale": 1}
    assert d.vips[1].machine.state == machine.State.INIT


def test_hardened_carpd_signs_what_a_peer_accepts_and_a_compatible_one_refuses(tmp_path):
    d = Carpd(make_cfg(tmp_path, "hardened"), "fw1", SECRET)
    own = "192.0.2.11"
    first = d.codec.encode(d.vips[1].auth, 1, 0, 0, own)
    second = d.codec.encode(d.vips[1].auth, 1, 0, 0, own)
    assert first[8:12] == second[8:12] and first[12:16] < second[12:16]
    peer = modes.Hardened("edge", hardened.Counter(1, lambda: 2))
    peer.windows.prove((packed(own), 1), 0)
    auths = {1: peer.auth(SECRET, 1, ["192.0.2.1"], 0)}
    assert isinstance(peer.decode(first, 255, own, auths, PEER), wire.Advert)
    assert peer.decode(first, 255, own, auths, PEER) == wire.Drop("replay", 1)
    (tmp_path / "c").mkdir()
    compat = Carpd(make_cfg(tmp_path / "c", "compatible"), "fw1", SECRET)
    receive(compat, [(first, own)])
    assert compat.vips[1].counters["drops"]["bad_version"] == 1
