"""carpd's control side without the network: status shape (the contract),
maintenance persistence, demotion sources, sync_hold, the subscribe stream,
and the pure packet helpers of the I/O shell."""
import asyncio
import dataclasses
import json
import os
import struct
from pathlib import Path

import pytest

from fwcluster import configfile, version
from fwcluster.core import config, contract
from fwcluster.carp import announce, sockets
from fwcluster.carp.core import machine, wire
from fwcluster.carp.ctlserver import ControlServer
from fwcluster.carp.node import Carpd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"


def make_cfg(tmp_path, extra=""):
    text = EXAMPLE.read_text()
    p = tmp_path / "cluster.toml"
    if "[carp]" not in extra:   # carpd alone: no ordered-takeover hold (default 30 s)
        # and the v2 adverts these tests feed it: compatible mode, said so
        extra = '\n[carp]\nsync_hold = 0\nmode = "compatible"\n' + extra
    p.write_text(text + extra)
    cfg = configfile.load(p, "fw1")
    import dataclasses
    return dataclasses.replace(cfg, run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"))


def run(coro):
    return asyncio.run(coro)


def test_status_has_exactly_the_contract_fields(tmp_path):
    d = Carpd(make_cfg(tmp_path), "fw1", b"s3cret")

    async def go():
        return await d.handle_request({"cmd": "status"})
    st = run(go())
    assert set(st) == {"ok", "node", "cluster", "demotion", "demotion_sources", "maintenance",
                       "preempt", "mode", "balance", "vips", "tracks", "group_role", "group_roles",
                       "hooks", "release", "hardened_told"}
    assert st["hardened_told"] == {}        # compatible mode: nothing to be told
    assert st["tracks"] == [] and st["group_role"] == "INIT"
    assert st["group_roles"] == {"default": "INIT"}
    assert st["release"] == version.release()
    assert st["ok"] is True and st["node"] == "fw1" and st["cluster"] == "edge"
    assert st["demotion"] == 0 and st["demotion_sources"] == {} and st["preempt"] is True
    assert [v["vhid"] for v in st["vips"]] == [1, 2, 3]
    v = st["vips"][2]
    assert set(v) == {"vhid", "group", "interface", "address", "family", "state", "master", "advbase",
                      "advskew", "demotion", "transitions", "counters", "hardened_version",
                      "hardened_peers"}
    assert v["group"] == "default"
    assert v["hardened_version"] is None and v["hardened_peers"] == {}  # compatible mode
    assert v["interface"] == "lan0" and v["address"] == "2001:db8:1::1/64" and v["family"] == 6
    assert v["state"] == "INIT" and v["master"] is None and v["advbase"] == 1 and v["advskew"] == 0
    assert set(v["counters"]) == {"adverts_sent", "adverts_received", "drops"}
    assert set(v["counters"]["drops"]) == set(wire.DROP_REASONS)
    json.dumps(st)  # serialisable as is


def test_a_track_demotes_by_its_weight_until_it_rises(tmp_path):
    d = Carpd(make_cfg(tmp_path, '\n[[track]]\nname = "gw"\ntype = "script"\n'
                                 'command = ["/bin/true"]\nweight = 50\nrise = 1\n'), "fw1", b"s3cret")
    assert d.demotion.sources == {"track:gw": 50}
    [t] = d.status()["tracks"]
    assert t["name"] == "gw" and t["state"] == "failed" and t["weight"] == 50 and t["last_ok"] is None

    async def go():
        d.tracker._result(d.tracker.specs["gw"], True, "exit 0")
    run(go())
    assert d.demotion.sources == {} and d.status()["tracks"][0]["state"] == "ok"


def test_a_reload_keeps_unchanged_tracks_and_drops_removed_ones(tmp_path):
    from fwcluster.core.config import Track
    gw = Track("gw", "script", command=("/bin/true",), weight=50, rise=1)
    d = Carpd(dataclasses.replace(make_cfg(tmp_path), tracks=(gw,)), "fw1", b"s3cret")

    async def go():
        d.tracker._result(gw, True, "exit 0")  # good: no demotion
        wan = Track("wan", "interface", interface="wan9", weight=30)
        d.tracker.reconfigure((gw, wan))  # gw unchanged, wan new (starts failed)
        kept = dict(d.demotion.sources), d.tracker.states["gw"].failed
        d.tracker.reconfigure((wan,))  # gw removed
        d.tracker.stop()
        return kept
    kept, gw_failed = run(go())
    assert kept == {"track:wan": 30} and gw_failed is False
    assert d.demotion.sources == {"track:wan": 30} and [t["name"] for t in d.status()["tracks"]] == ["wan"]


def test_maintenance_demotes_and_persists_across_restart(tmp_path):
    cfg = make_cfg(tmp_path)
    d = Carpd(cfg, "fw1", b"s3cret")

    async def go():
        r = await d.handle_request({"cmd": "maintenance", "on": True})
        return r, await d.handle_request({"cmd": "status"})
    r, st = run(go())
    assert r == {"ok": True, "maintenance": True}
    assert st["maintenance"] is True and st["demotion"] == 240
    assert st["demotion_sources"] == {"maintenance": 240}
    assert (Path(cfg.state_dir) / "maintenance").read_text() == "on\n"
    again = Carpd(cfg, "fw1", b"s3cret")  # a restarted carpd
    assert again.maintenance is True and again.demotion.total == 240
    assert all(r.machine.demotion == 240 for r in again.vips.values())

    async def off():
        return await again.handle_request({"cmd": "maintenance", "on": False})
    assert run(off()) == {"ok": True, "maintenance": False}
    assert Carpd(cfg, "fw1", b"s3cret").demotion.total == 0


def test_set_demotion_sums_sources_and_validates(tmp_path):
    d = Carpd(make_cfg(tmp_path), "fw1", b"s3cret")

    async def go():
        out = [await d.handle_request({"cmd": "set-demotion", "source": "syncd", "value": 32}),
               await d.handle_request({"cmd": "maintenance", "on": True}),
               await d.handle_request({"cmd": "set-demotion", "source": "syncd", "value": 0}),
               await d.handle_request({"cmd": "set-demotion", "source": "syncd", "value": 256}),
               await d.handle_request({"cmd": "set-demotion", "source": "", "value": 1}),
               await d.handle_request({"cmd": "set-demotion", "source": "x", "value": True}),
               await d.handle_request({"cmd": "maintenance", "on": "yes"}),
               await d.handle_request({"cmd": "frobnicate"})]
        return out
    out = run(go())
    assert out[0] == {"ok": True, "demotion": 32}
    assert out[2] == {"ok": True, "demotion": 240}
    assert all(r["ok"] is False and r["error"] for r in out[3:])
    assert "unknown command" in out[7]["error"]


def test_sync_hold_starts_demoted_by_syncd(tmp_path):
    d = Carpd(make_cfg(tmp_path, "\n[carp]\nsync_hold = 30\n"), "fw1", b"s3cret")
    assert d.demotion.sources == {"syncd": 32}
    assert all(r.machine.demotion == 32 for r in d.vips.values())


def test_each_vhid_gets_its_own_random_cookie(tmp_path):
    d = Carpd(make_cfg(tmp_path), "fw1", b"s3cret")
    cookies = {r.auth.cookie for r in d.vips.values()}
    assert len(cookies) == 3 and 0 not in cookies


def signers(vhid: int, cookie: int) -> tuple[wire.Auth, wire.Auth]:
    """A peer's and a forger's signing for vhid (over the first vip, as
    vip 1's and the bucket elections' adverts are)."""
    return (wire.Auth(b"s3cret", vhid, ["192.0.2.1"], cookie=cookie),
            wire.Auth(b"wrong", vhid, ["192.0.2.1"], cookie=cookie + 1))


def receive(d: Carpd, packets) -> None:
    """Hand IPv4 packets (interface, payload, ttl, source) to carpd as its
    sockets would."""
    async def go():
        for ifname, payload, ttl, source in packets:
            d._packet(d.ifaces[ifname], 4, payload, ttl, source)
    run(go())


def test_packet_counting_by_reason(tmp_path):
    d = Carpd(make_cfg(tmp_path), "fw1", b"s3cret")
    peer, forged = signers(1, cookie=77)
    src = "192.0.2.12"
    receive(d, [("lan0", wire.encode(peer, 1, 100), 255, src),
                ("lan0", wire.encode(forged, 1, 100), 255, src),
                ("lan0", wire.encode(peer, 1, 100), 64, src),
                ("lan0", b"\x21", 255, src),
                ("lan0", wire.encode(d.vips[1].auth, 1, 0), 255, src),  # our own
                ("lan0", wire.encode(wire.Auth(b"s3cret", 9, [], 1), 1, 0), 255, src)])
    c = d.vips[1].counters
    assert c["adverts_received"] == 1  # INIT ignores it, but it was a valid advert
    assert c["drops"] == {**{r: 0 for r in wire.DROP_REASONS}, "bad_hmac": 1, "bad_ttl": 1,
                          "truncated": 1, "replay": 1, "unknown_vhid": 1}
    assert d.vips[3].counters["drops"]["bad_hmac"] == 0  # vhid 3 is IPv6: not on this socket
    assert d.vips[1].machine.state == machine.State.INIT


def test_subscribe_streams_snapshot_then_events(tmp_path):
    path = str(tmp_path / "c.sock")

    async def handler(req):
        return {"ok": True, "echo": req["cmd"]}

    async def go():
        srv = ControlServer(path, handler, lambda: [{"event": "role", "vhid": 1, "state": "BACKUP",
                                                      "time": 1.0}])
        await srv.start()
        assert os.stat(path).st_mode & 0o777 == 0o600
        r, w = await asyncio.open_unix_connection(path)
        w.write(b'{"cmd":"status"}\n')
        assert json.loads(await r.readline()) == {"ok": True, "echo": "status"}
        w.write(b"not json\n")
        assert json.loads(await r.readline())["ok"] is False
        w.write(b'{"cmd":"subscribe"}\n')
        first = json.loads(await r.readline())
        while not srv.subscribers:
            await asyncio.sleep(0)
        srv.publish({"event": "role", "vhid": 1, "state": "MASTER", "time": 2.0})
        second = json.loads(await r.readline())
        w.close()
        for _ in range(100):
            if not srv.subscribers:
                break
            await asyncio.sleep(0.01)
        gone = not srv.subscribers
        await srv.stop()
        return first, second, gone
    first, second, gone = run(go())
    assert first["state"] == "BACKUP" and second["state"] == "MASTER"
    assert gone


def test_garp_frames():
    req, rep = announce.garp_frames("02:00:00:00:00:01", "192.0.2.1")
    assert req[:6] == b"\xff" * 6 and req[6:12] == bytes.fromhex("020000000001")
    assert req[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", req[14:42])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert spa == tpa == bytes([192, 0, 2, 1]) and sha == bytes.fromhex("020000000001")
    assert struct.unpack("!H", rep[20:22])[0] == 2


def test_na_message():
    msg = announce.na_message("02:00:00:00:00:01", "2001:db8:1::1")
    assert msg[0] == 136 and msg[1] == 0
    assert struct.unpack("!I", msg[4:8])[0] == 0xA0000000  # Router, Override, not Solicited
    assert msg[8:24] == bytes.fromhex("20010db8000100000000000000000001")
    assert msg[24:] == bytes([2, 1]) + bytes.fromhex("020000000001")
    with pytest.raises(ValueError):
        announce.mac_bytes("02:00")


def test_parse_ipv4():
    payload = bytes(36)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 20 + 36, 1, 0x4000, 255, 112, 0,
                      bytes([192, 0, 2, 12]), bytes([224, 0, 0, 18]))
    assert sockets.parse_ipv4(hdr + payload) == (payload, 255, "192.0.2.12")
    assert sockets.parse_ipv4(hdr + payload + b"pad") == (payload, 255, "192.0.2.12")
    assert sockets.parse_ipv4(b"\x45" + bytes(10)) is None
    assert sockets.parse_ipv4(b"\x60" + bytes(40)) is None


def test_control_serve_streams_a_command_then_closes(tmp_path):
    # fwcluster.ctlsock.serve's stream hook (what carpd's subscribe runs on):
    # requests before it are answered as usual; the stream's end closes.
    from fwcluster import ctlsock
    path = str(tmp_path / "s.sock")
    ended = []

    async def handler(req):
        return {"ok": True, "cmd": req["cmd"]}

    async def count(req):
        try:
            for i in range(req.get("n", 2)):
                yield {"i": i}
        finally:
            ended.append(req["cmd"])

    async def go():
        srv = await ctlsock.serve(path, handler, {"count": count})
        r, w = await asyncio.open_unix_connection(path)
        w.write(b'{"cmd":"status"}\n{"cmd":"count","n":3}\n')
        lines = [json.loads(x) async for x in r]
        w.close()
        srv.close()
        return lines
    assert run(go()) == [{"ok": True, "cmd": "status"}, {"i": 0}, {"i": 1}, {"i": 2}]
    assert ended == ["count"]


def test_neighbour_solicitation_parsing_and_answer():
    import ipaddress as ip
    ns = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + ip.IPv6Address("2001:db8:1::1").packed
    assert announce.ns_target(ns) == "2001:db8:1::1"
    assert announce.ns_target(ns[:20]) is None
    assert announce.ns_target(bytes([136]) + ns[1:]) is None  # an advertisement
    na = announce.na_message("01:00:5e:00:01:03", "2001:db8:1::1", solicited=True)
    flags = struct.unpack("!I", na[4:8])[0]
    assert na[0] == 136 and flags == (announce.NA_FLAG_ROUTER | announce.NA_FLAG_SOLICITED
                                      | announce.NA_FLAG_OVERRIDE)
    assert na[24:26] == b"\x02\x01" and na[26:32] == bytes.fromhex("01005e000103")
    words = struct.unpack("@8I", announce.ns_filter())
    passed = [t for t in range(256) if not words[t >> 5] & (1 << (t & 31))]
    assert passed == [135]


def test_role_lines_name_the_heard_master_and_a_backup_that_starts_hearing_one(tmp_path):
    """syncd counts a peer heard through CARP as never absent
    (contract.peer_absent): carpd's role lines carry the heard master, and a
    BACKUP that starts hearing one says so although its role is unchanged."""
    d = Carpd(make_cfg(tmp_path), "fw1", b"s3cret")
    lines = []
    d.ctl.publish = lines.append

    async def go():
        d._event(1, machine.LinkChanged(True))         # INIT -> BACKUP, nobody heard yet
        backup = list(lines)
        lines.clear()
        better = wire.Advert(1, 1, 0, 0, 5)
        d._event(1, machine.AdvertReceived(better, "192.0.2.12"))
        d._event(1, machine.AdvertReceived(better, "192.0.2.12"))   # no change: no line
        heard = list(lines)
        snap = d._role_snapshot()
        for r in d.vips.values():
            if r.timer is not None:
                r.timer.cancel()
        return backup, heard, snap
    backup, heard, snap = run(go())
    assert [(x["vhid"], x["state"], x["master"]) for x in backup] == [(1, "BACKUP", None)]
    assert [(x["vhid"], x["state"], x["master"]) for x in heard] == [(1, "BACKUP", "192.0.2.12")]
    assert snap[0]["master"] == "192.0.2.12" and snap[1]["master"] is None
    assert snap[-1] == {"event": "snapshot-end"}


# --- failover groups ---------------------------------------------------------------
def split_carpd(tmp_path, node):
    p = tmp_path / "cluster.toml"
    p.write_text((ROOT / "docs" / "examples" / "cluster-split.toml").read_text()
                 + '\n[carp]\nsync_hold = 0\nmode = "compatible"\n')
    cfg = dataclasses.replace(configfile.load(p, node), run_dir=str(tmp_path / "run"),
                              state_dir=str(tmp_path / "state"))
    return Carpd(cfg, node, b"s3cret")


def test_each_group_elects_with_its_own_skews_and_delay(tmp_path):
    d = split_carpd(tmp_path, "fw2")
    assert {v: r.machine.advskew for v, r in d.vips.items()} == {1: 100, 2: 100, 3: 0, 4: 0}
    assert all(r.machine.preempt_delay == 10.0 for r in d.vips.values())
    # a claim spreads within its group only
    assert d.group.of[1] is d.group.of[2] and d.group.of[3] is d.group.of[4]
    assert d.group.of[1] is not d.group.of[3]


def test_role_hooks_run_once_per_group_named_by_it(tmp_path):
    d = split_carpd(tmp_path, "fw1")
    told = []
    d.hooks.transition = told.append
    for vhid in (1, 2):
        d.vips[vhid].machine.state = machine.State.MASTER
        d._group_role_changed("left", "test")
    d.vips[3].machine.state = machine.State.BACKUP
    d._group_role_changed("right", "test")
    assert [(e["group"], e["vhids"], e["old"], e["new"]) for e in told] == [
        ("left", [1, 2], "INIT", "MASTER"), ("right", [3, 4], "INIT", "BACKUP")]
    st = run(d.handle_request({"cmd": "status"}))
    assert st["group_roles"] == {"left": "MASTER", "right": "BACKUP"}
    assert st["group_role"] == "MASTER"


def test_peer_speaks_sets_the_version_a_hardened_carpd_sends_at(tmp_path):
    """syncd tells carpd a peer speaks hardened CARP up to 4 (a rolled-back
    member, silent as backup): every vhid's adverts go out at 4 at once."""
    d = Carpd(make_cfg(tmp_path, '\n[carp]\nsync_hold = 0\nmode = "hardened"\n'), "fw1", b"s3cret")
    d.vips[1].machine.state = machine.State.MASTER
    sent = []
    d._send_advert = lambda action: sent.append((action.vhid, d.codec.version(action.vhid)))

    async def go():
        return [await d.handle_request(contract.peer_speaks("fw2", 4)),
                await d.handle_request({"cmd": "status"}),
                await d.handle_request(contract.peer_speaks("fw9", 4)),
                await d.handle_request({**contract.peer_speaks("fw2", 4), "newest": "4"}),
                await d.handle_request(contract.peer_speaks("fw2", 5)),
                await d.handle_request({"cmd": "status"})]
    told, st, stranger, bad, again, st2 = run(go())
    assert told == {"ok": True} and again == {"ok": True}
    assert st["hardened_told"] == {"fw2": 4} and {v["hardened_version"] for v in st["vips"]} == {4}
    assert stranger["ok"] is False and "not a peer" in stranger["error"]
    assert bad["ok"] is False and "newest" in bad["error"]
    assert st2["hardened_told"] == {"fw2": 5} and {v["hardened_version"] for v in st2["vips"]} == {5}
    # each change sends the master's adverts at once (vhid 1 only: the others are not MASTER)
    assert sent == [(1, 4), (1, 5)]
