"""carpd's active-active side without the network: the bucket elections it
runs, how their adverts are checked and counted, how demotion and links
reach them, which vip actions it takes over, the status object and
fwctl's rendering of it."""
import asyncio
import dataclasses
import json
import struct
from pathlib import Path

from fwcluster import configfile
from fwcluster.core import hashbuckets, config
from fwcluster.carp import active_active
from fwcluster.carp.core import machine, wire
from fwcluster.carp.node import Carpd
from fwcluster.fwctl import status as fwctl_status
from tests.unit.test_carp_control import receive, signers

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"
ACTIVE = "\n[balance]\nmode = \"active-active\"\nbuckets = 6\n"


def make(tmp_path, extra=ACTIVE, node="fw1") -> Carpd:
    p = tmp_path / "cluster.toml"
    p.write_text(EXAMPLE.read_text() + extra)
    cfg = dataclasses.replace(configfile.load(p, node), run_dir=str(tmp_path / "run"),
                              state_dir=str(tmp_path / "state"))
    return Carpd(cfg, node, b"s3cret")


def run(coro):
    return asyncio.run(coro)


def test_active_standby_has_no_buckets(tmp_path):
    d = make(tmp_path, extra="")
    assert d.balancing is None
    assert "buckets" not in d.status()


def test_one_election_per_bucket_with_rotated_skews(tmp_path):
    d = make(tmp_path)
    b = d.status()["buckets"]
    assert b["count"] == 6 and b["interface"] == "lan0"
    assert [r["vhid"] for r in b["per_bucket"]] == [255, 254, 253, 252, 251, 250]
    assert [r["bucket"] for r in b["per_bucket"]] == list(range(6))
    # Two members: fw1 prefers the even buckets (its own skew 0), fw2 the odd.
    assert [r["preferred"] for r in b["per_bucket"]] == ["fw1", "fw2"] * 3
    assert [r["advskew"] for r in b["per_bucket"]] == [0, 100] * 3
    assert all(r["state"] == "INIT" and r["master"] is None for r in b["per_bucket"])
    assert b["owned"] == [] and b["applied"] is None and b["error"] is None
    json.dumps(d.status())
    other = make(tmp_path, node="fw2").status()["buckets"]
    assert [r["advskew"] for r in other["per_bucket"]] == [100, 0] * 3


def test_bucket_adverts_are_checked_and_counted_on_their_bucket(tmp_path):
    d = make(tmp_path, ACTIVE + '\n[carp]\nmode = "compatible"\n')  # fed v2 adverts
    # Bucket adverts are signed over the first vip's address.
    peer, forged = signers(254, cookie=5)
    src = "192.0.2.12"
    receive(d, [("lan0", wire.encode(peer, 1, 0), 255, src),
                ("lan0", wire.encode(forged, 1, 0), 255, src),
                ("lan0", wire.encode(wire.Auth(b"s3cret", 9, [], 1), 1, 0), 255, src),
                ("wan0", wire.encode(peer, 1, 0), 255, "198.51.100.12")])
    c = d.balancing.runs[254].counters
    assert c["adverts_received"] == 1 and c["drops"]["bad_hmac"] == 1
    assert sum(d.balancing.runs[255].counters["drops"].values()) == 0
    # An unknown vhid is counted on the vips of the interface, not on buckets;
    # a bucket advert on another interface is an unknown vhid there.
    assert d.vips[1].counters["drops"]["unknown_vhid"] == 1
    assert d.vips[2].counters["drops"]["unknown_vhid"] == 1
    assert d.status()["buckets"]["per_bucket"][1]["counters"] == {
        "adverts_sent": 0, "adverts_received": 1, "drops": 1}


def test_elections_follow_link_timers_and_demotion(tmp_path):
    d = make(tmp_path)

    async def go():
        d.ifaces["lan0"].own[4] = "192.0.2.11"
        d.balancing.addresses_changed("lan0", d.ifaces["lan0"].own)  # as _refresh_addresses does
        d._link_changed(d.ifaces["lan0"], True)
        states = {v: r.machine.state for v, r in d.balancing.runs.items()}
        # Link up: BACKUP, waiting master-down; the vips of lan0 get held.
        queued = []
        while not d.actions.empty():
            queued.append(d.actions.get_nowait())
        r = d.balancing.runs[255]
        d.balancing._timer(255, r.machine.deadline)  # nobody advertised bucket 0: ours
        after = d.status()["buckets"]
        queued2 = []
        while not d.actions.empty():
            queued2.append(d.actions.get_nowait())
        await d.handle_request({"cmd": "set-demotion", "source": "syncd", "value": 32})
        demotions = {r.machine.demotion for r in d.balancing.runs.values()}
        return states, queued, after, queued2, demotions
    states, queued, after, queued2, demotions = run(go())
    assert set(states.values()) == {machine.State.BACKUP}
    assert active_active.HoldVips("lan0") in queued
    assert after["owned"] == [0]
    assert after["per_bucket"][0]["state"] == "MASTER" and after["per_bucket"][0]["master"] == "192.0.2.11"
    assert after["by_master"] == {"192.0.2.11": [0]}
    # Claiming the bucket updates the owned set before the first advert goes out.
    kinds = [type(a) for a in queued2]
    assert kinds.index(active_active.SyncOwned) < kinds.index(machine.SendAdvert)
    assert demotions == {32}


def test_sync_hold_demotes_bucket_elections_from_the_start(tmp_path):
    d = make(tmp_path, extra=ACTIVE + "\n[carp]\nsync_hold = 30\n")
    assert {r.machine.demotion for r in d.balancing.runs.values()} == {32}


def test_which_vip_actions_balancing_takes_over(tmp_path):
    d = make(tmp_path)
    b = d.balancing
    # Vips of both families stay held when their election is lost, and are
    # announced with the vip MAC (GARP for IPv4, NA for IPv6).
    assert b.handles(machine.RemoveVip(1)) and b.handles(machine.Announce(2))
    assert b.handles(machine.RemoveVip(3)) and b.handles(machine.Announce(3))
    assert not b.handles(machine.AddVip(1))
    assert b.handles(machine.SendAdvert(253, 1, 0, 0))


def test_subscribe_snapshot_includes_bucket_vhids(tmp_path):
    d = make(tmp_path)
    lines = [x for x in d._role_snapshot() if x["event"] == "role"]
    assert [x["vhid"] for x in lines] == [1, 2, 3, 255, 254, 253, 252, 251, 250]
    assert lines[3]["bucket"] == 0 and lines[3]["state"] == "INIT"


def test_owned_set_is_empty_while_stopping(tmp_path):
    d = make(tmp_path)
    d.balancing.runs[255].machine.state = machine.State.MASTER
    assert d.balancing.owned() == frozenset({0})
    d.balancing.stopping = True
    assert d.balancing.owned() == frozenset()


def test_garp_names_the_vip_mac_but_comes_from_our_own():
    own, vmac = "02:00:00:00:00:0b", hashbuckets.vip_mac(1)
    frames = active_active.garp_frames(own, vmac, "192.0.2.1")
    assert len(frames) == 2
    for f in frames:
        assert f[0:6] == b"\xff" * 6 and f[6:12] == bytes.fromhex("02000000000b")
        assert f[12:14] == b"\x08\x06"
        sender_hw, sender_ip = f[22:28], f[28:32]
        assert sender_hw == bytes.fromhex("01005e000101") and sender_ip == bytes([192, 0, 2, 1])
    assert struct.unpack("!H", frames[0][20:22])[0] == 1 and struct.unpack("!H", frames[1][20:22])[0] == 2


def test_membership_request_layout():
    req = active_active.membership_request(7, "01:00:5e:00:01:02")
    assert len(req) == 16
    assert struct.unpack("@iHH", req[:8]) == (7, 0, 6)
    assert req[8:] == bytes.fromhex("01005e0001020000")


def test_bucket_status_groups_owners():
    plan = hashbuckets.elections(4, ["fw1", "fw2"], [0, 100], [1], 1, "fw1")
    st = active_active.bucket_status(plan, {255: "MASTER", 254: "BACKUP", 253: "MASTER", 252: "INIT"},
                                 {255: "192.0.2.11", 254: "192.0.2.12", 253: "192.0.2.11", 252: None},
                                 frozenset({0, 2}), None, "lan0")
    assert st["owned"] == [0, 2] and st["applied"] == [0, 2]
    assert st["by_master"] == {"192.0.2.11": [0, 2], "192.0.2.12": [1]}
    assert "counters" not in st["per_bucket"][0]


def test_fwctl_human_status_shows_owned_and_owners(tmp_path, capsys):
    plan = hashbuckets.elections(6, ["fw1", "fw2", "fw3"], [0, 100, 150], [1, 2], 1, "fw1")
    owner = hashbuckets.owners(6, ["fw1", "fw2", "fw3"])
    addr = {"fw1": "192.0.2.11", "fw2": "192.0.2.12", "fw3": "192.0.2.13"}
    states = {e.vhid: ("MASTER" if owner[e.bucket] == "fw1" else "BACKUP") for e in plan}
    masters = {e.vhid: addr[owner[e.bucket]] for e in plan}
    b = active_active.bucket_status(plan, states, masters, frozenset({0}), None, "lan0")
    fwctl_status.human({"node": "fw1", "cluster": "edge", "demotion": 0, "vips": [], "buckets": b})
    out = capsys.readouterr().out
    assert "buckets: 2 of 6 owned here: 0,3  (nft set: not updated yet)" in out
    assert "192.0.2.11 (this member)  0,3" in out
    assert "192.0.2.12" in out and "1,4" in out and "2,5" in out
