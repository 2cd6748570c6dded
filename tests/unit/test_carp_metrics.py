"""carpd's metrics: made from its status object, valid Prometheus text
(parsed by prometheus_client), served by {"cmd":"metrics"}, and written as a
textfile."""
import asyncio
import dataclasses
import logging
from pathlib import Path

from fwcluster import configfile
from fwcluster.core import config
from fwcluster.carp import metrics
from fwcluster.carp.core import wire
from fwcluster.carp.node import Carpd
from fwcluster.metrics import render
from tests.prom_text import key, samples

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"


def make_cfg(tmp_path, extra=""):
    p = tmp_path / "cluster.toml"
    # carpd alone: no ordered-takeover hold (default 30 s)
    p.write_text(EXAMPLE.read_text() + "\n[carp]\nsync_hold = 0\n" + extra)
    cfg = configfile.load(p, "fw1")
    return dataclasses.replace(cfg, run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"))


STATUS = {
    "node": "fw1", "cluster": "edge", "demotion": 240,
    "demotion_sources": {"maintenance": 240}, "maintenance": True, "preempt": True,
    "mode": "hardened", "balance": "active-standby",
    "vips": [
        {"vhid": 1, "interface": "lan0", "address": "192.0.2.1/24", "family": 4, "state": "MASTER",
         "master": "192.0.2.11", "advbase": 1, "advskew": 64, "demotion": 240, "transitions": 2,
         "counters": {"adverts_sent": 87, "adverts_received": 1,
                      "drops": {r: (5 if r == "bad_hmac" else 0) for r in wire.DROP_REASONS}}},
        {"vhid": 3, "interface": "lan0", "address": "2001:db8:1::1/64", "family": 6,
         "state": "BACKUP", "master": "2001:db8:1::12", "advbase": 1, "advskew": 64,
         "demotion": 240, "transitions": 3,
         "counters": {"adverts_sent": 2, "adverts_received": 90,
                      "drops": {r: 0 for r in wire.DROP_REASONS}}},
    ],
}


def test_families_carry_the_status_values():
    got = samples(render(metrics.families(STATUS, ("lan0", "wan0"))))
    lan1 = {"vhid": "1", "interface": "lan0"}
    lan3 = {"vhid": "3", "interface": "lan0"}
    assert got[key("fwcluster_carp_info", node="fw1", cluster="edge")] == 1
    for state in metrics.STATES:
        assert got[key("fwcluster_carp_state", **lan1, address="192.0.2.1/24", state=state)] == \
            (state == "MASTER")
        assert got[key("fwcluster_carp_state", **lan3, address="2001:db8:1::1/64", state=state)] == \
            (state == "BACKUP")
    assert got[key("fwcluster_carp_master", **lan1)] == 1
    assert got[key("fwcluster_carp_master", **lan3)] == 0
    assert got[key("fwcluster_carp_transitions_total", **lan1)] == 2
    assert got[key("fwcluster_carp_adverts_sent_total", **lan1)] == 87
    assert got[key("fwcluster_carp_adverts_received_total", **lan3)] == 90
    assert got[key("fwcluster_carp_drops_total", **lan1, reason="bad_hmac")] == 5
    assert got[key("fwcluster_carp_drops_total", **lan3, reason="replay")] == 0
    assert got[key("fwcluster_carp_advert_interval_seconds", **lan1)] == 1.25
    assert got[key("fwcluster_carp_demotion")] == 240
    assert got[key("fwcluster_carp_demotion_source", source="maintenance")] == 240
    # Inactive sources keep a series at 0 (alerts must not see it vanish).
    assert got[key("fwcluster_carp_demotion_source", source="syncd")] == 0
    assert got[key("fwcluster_carp_demotion_source", source="link:wan0")] == 0
    assert got[key("fwcluster_carp_maintenance")] == 1
    assert got[key("fwcluster_carp_preempt")] == 1
    assert got[key("fwcluster_carp_hardened")] == 1
    compatible = samples(render(metrics.families({**STATUS, "mode": "compatible"})))
    assert compatible[key("fwcluster_carp_hardened")] == 0


def test_each_vhids_hardened_version_has_a_series_in_hardened_mode_only():
    vips = [{**STATUS["vips"][0], "hardened_version": 4}, {**STATUS["vips"][1], "hardened_version": 5}]
    got = samples(render(metrics.families({**STATUS, "vips": vips})))
    assert got[key("fwcluster_carp_hardened_version", vhid="1", interface="lan0")] == 4
    assert got[key("fwcluster_carp_hardened_version", vhid="3", interface="lan0")] == 5
    compatible = [{**v, "hardened_version": None} for v in STATUS["vips"]]
    got = samples(render(metrics.families({**STATUS, "mode": "compatible", "vips": compatible})))
    assert not [n for n, _ in got if n == "fwcluster_carp_hardened_version"]


def test_every_drop_reason_has_a_series_per_vhid():
    got = samples(render(metrics.families(STATUS)))
    reasons = {dict(labels)["reason"] for (name, labels) in got if name == "fwcluster_carp_drops_total"}
    assert reasons == set(wire.DROP_REASONS)


def test_every_drop_reason_has_a_series_even_if_the_status_lacks_it():
    old = {**STATUS, "vips": [{**STATUS["vips"][0], "counters": {"drops": {"bad_hmac": 2}}}]}
    got = samples(render(metrics.families(old)))
    lan1 = {"vhid": "1", "interface": "lan0"}
    for reason in wire.DROP_REASONS:
        assert got[key("fwcluster_carp_drops_total", **lan1, reason=reason)] == \
            (2 if reason == "bad_hmac" else 0)
    assert {"unhardened", "stale"} <= set(wire.DROP_REASONS)


def test_metrics_command_matches_status(tmp_path):
    d = Carpd(make_cfg(tmp_path), "fw1", b"s3cret")

    async def go():
        await d.handle_request({"cmd": "maintenance", "on": True})
        return (await d.handle_request({"cmd": "metrics"}),
                await d.handle_request({"cmd": "status"}))
    reply, st = asyncio.run(go())
    assert reply["ok"] is True
    got = samples(reply["text"])
    assert got[key("fwcluster_carp_maintenance")] == 1
    assert got[key("fwcluster_carp_demotion")] == st["demotion"] == 240
    assert (st["mode"], st["balance"]) == ("hardened", "active-standby")  # the default
    assert got[key("fwcluster_carp_hardened")] == 1
    for v in st["vips"]:
        who = {"vhid": str(v["vhid"]), "interface": v["interface"]}
        assert got[key("fwcluster_carp_state", **who, address=v["address"], state="INIT")] == 1
        assert got[key("fwcluster_carp_transitions_total", **who)] == v["transitions"]


def test_textfile_written_only_when_configured_and_on_change(tmp_path):
    prom_dir = tmp_path / "prom" / "{node}"
    cfg = make_cfg(tmp_path, f'\n[metrics]\ntextfile_dir = "{prom_dir}"\n')
    d = Carpd(cfg, "fw1", b"s3cret")
    path = tmp_path / "prom" / "fw1" / "carpd.prom"
    d._write_textfile()
    first = path.read_text()
    assert samples(first)[key("fwcluster_carp_maintenance")] == 0
    stamp = path.stat().st_mtime_ns
    d._write_textfile()  # nothing changed: the file is left alone
    assert path.stat().st_mtime_ns == stamp

    async def go():
        await d.handle_request({"cmd": "maintenance", "on": True})
    asyncio.run(go())
    d._write_textfile()
    assert samples(path.read_text())[key("fwcluster_carp_maintenance")] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["carpd.prom"]



def test_no_textfile_without_textfile_dir(tmp_path):
    d = Carpd(make_cfg(tmp_path), "fw1", b"s3cret")
    assert d._textfile_dir() is None
    d._write_textfile()
    assert d._textfile_last is None and not list(tmp_path.rglob("*.prom"))


def test_metrics_off_by_default(tmp_path):
    d = Carpd(make_cfg(tmp_path), "fw1", b"s3cret")

    async def go():
        await d._start_metrics()
        return d._metrics_server, list(d._tasks)
    server, tasks = asyncio.run(go())
    assert server is None and tasks == []


def test_endpoint_failure_is_not_fatal(tmp_path):
    import socket
    with socket.socket() as busy:  # the port is taken: carpd logs and carries on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = Carpd(make_cfg(tmp_path, f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'), "fw1", b"s3cret")

        async def go():
            await d._start_metrics()
            return d._metrics_server
        assert asyncio.run(go()) is None


def test_a_listen_host_that_does_not_parse_is_one_log_line(tmp_path, caplog):
    """Not an IP address: carpd says so in one line and runs on without it."""
    d = Carpd(make_cfg(tmp_path, '\n[metrics]\nlisten = "localhost:9780"\n'), "fw1", b"s3cret")

    async def go():
        await d._start_metrics()
        return d._metrics_server
    with caplog.at_level(logging.INFO):
        assert asyncio.run(go()) is None
    lines = [r.getMessage() for r in caplog.records if "metrics" in r.getMessage()]
    assert lines == ["metrics endpoint localhost:9780: metrics listen 'localhost:9780': "
                     "'localhost' is not an IP address (IPv4, or IPv6 in brackets) "
                     "(carrying on without it)"]


def test_bucket_families_in_active_active():
    st = dict(STATUS, buckets={
        "count": 3, "interface": "lan0", "owned": [0, 2], "applied": [0, 2], "error": None,
        "by_master": {}, "per_bucket": [{"bucket": b, "vhid": 10 + b} for b in range(3)]})
    got = samples(render(metrics.families(st)))
    assert got[key("fwcluster_carp_buckets")] == 3
    assert got[key("fwcluster_carp_buckets_owned")] == 2
    assert [got[key("fwcluster_carp_bucket_owned", bucket=str(b))] for b in range(3)] == [1, 0, 1]
    assert got[key("fwcluster_carp_buckets_applied")] == 1
    st["buckets"]["applied"] = None  # nft set not updated yet
    assert samples(render(metrics.families(st)))[key("fwcluster_carp_buckets_applied")] == 0
    assert not any(name.startswith("fwcluster_carp_bucket") for name, _ in
                   samples(render(metrics.families(STATUS))))


def test_track_and_hook_families():
    st = dict(STATUS, tracks=[
        {"name": "gw", "type": "icmp", "state": "held", "failed": True, "weight": 50,
         "last_ok": True, "last_age": 0.4, "changes_last_minute": 4},
        {"name": "up", "type": "interface", "state": "ok", "failed": False, "weight": 240,
         "last_ok": None, "last_age": None, "changes_last_minute": 0}],
        hooks={"runs": 3, "failures": 1, "dropped": 0})
    got = samples(render(metrics.families(st)))
    assert got[key("fwcluster_carp_track_failed", track="gw", type="icmp")] == 1
    assert got[key("fwcluster_carp_track_held", track="gw", type="icmp")] == 1
    assert got[key("fwcluster_carp_track_weight", track="gw", type="icmp")] == 50
    assert got[key("fwcluster_carp_track_last_check_age_seconds", track="gw", type="icmp")] == 0.4
    assert got[key("fwcluster_carp_track_changes_last_minute", track="gw", type="icmp")] == 4
    assert got[key("fwcluster_carp_track_failed", track="up", type="interface")] == 0
    assert got[key("fwcluster_carp_track_last_ok", track="up", type="interface")] == 0
    assert key("fwcluster_carp_track_last_check_age_seconds", track="up", type="interface") not in got
    assert got[key("fwcluster_carp_hook_runs_total")] == 3
    assert got[key("fwcluster_carp_hook_failures_total")] == 1
