"""carpd metrics in the lab: each member's localhost endpoint scraped from
inside its namespace and parsed with prometheus_client's parser, checked
against `fwctl status --json`; the node-exporter textfile; the control
command."""
from __future__ import annotations

from carp_helpers import fast, wait_settled
from tests.prom_text import (key, listening, metrics_config, read_textfile, samples, scrape,
                             scrape_between, textfile_path)

LISTEN = "127.0.0.1:9780"


def check_against_status(got: dict, before: dict, after: dict) -> None:
    """Scraped between two `fwctl status --json`: every value equals the
    status (or, for counters that move, lies between the two)."""
    assert got[key("fwcluster_carp_info", node=before["node"], cluster=before["cluster"])] == 1
    assert got[key("fwcluster_carp_demotion")] == before["demotion"] == after["demotion"]
    assert got[key("fwcluster_carp_maintenance")] == int(before["maintenance"])
    for src, value in before["demotion_sources"].items():
        assert got[key("fwcluster_carp_demotion_source", source=src)] == value
    for v0, v1 in zip(before["vips"], after["vips"]):
        who = {"vhid": str(v0["vhid"]), "interface": v0["interface"]}
        assert v0["state"] == v1["state"]
        for state in ("INIT", "BACKUP", "MASTER"):
            assert got[key("fwcluster_carp_state", **who, address=v0["address"], state=state)] == \
                (v0["state"] == state)
        assert got[key("fwcluster_carp_master", **who)] == (v0["state"] == "MASTER")
        assert got[key("fwcluster_carp_transitions_total", **who)] == v0["transitions"]
        c0, c1 = v0["counters"], v1["counters"]
        for name in ("adverts_sent", "adverts_received"):
            assert c0[name] <= got[key(f"fwcluster_carp_{name}_total", **who)] <= c1[name]
        for reason, n in c0["drops"].items():
            assert n <= got[key("fwcluster_carp_drops_total", **who, reason=reason)] <= \
                c1["drops"][reason]


def test_metrics_endpoint_textfile_and_command(carp_lab):
    lab = carp_lab(members=2, ipv6=True)
    lab.write_config(**fast(2), metrics=metrics_config(lab, LISTEN))
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1")

    for m in lab.members:
        check_against_status(*scrape_between(lab, m, LISTEN, "status"))
        assert listening(lab, m, 9780) == [LISTEN]  # the namespace's loopback only

    # Maintenance on fw1: fw2 takes over; both endpoints say so.
    assert lab.fwctl("fw1", "maintenance", "on") == {"maintenance": True}
    wait_settled(lab, "fw2")
    got1, got2 = scrape(lab, "fw1", LISTEN), scrape(lab, "fw2", LISTEN)
    assert got1[key("fwcluster_carp_maintenance")] == 1
    assert got1[key("fwcluster_carp_demotion_source", source="maintenance")] == 240
    assert got1[key("fwcluster_carp_master", vhid="1", interface="lan0")] == 0
    assert got2[key("fwcluster_carp_master", vhid="1", interface="lan0")] == 1
    assert got2[key("fwcluster_carp_demotion")] == 0

    # The textfile follows a role change within seconds (not the 5 s period).
    prom = {m: textfile_path(lab, m, "carpd") for m in lab.members}

    def textfile(m):
        return read_textfile(prom[m])

    def agrees(m) -> bool:
        st, got = lab.status(m), textfile(m)
        return bool(got) and got.get(key("fwcluster_carp_maintenance")) == int(st["maintenance"]) \
            and all(got.get(key("fwcluster_carp_master", vhid=str(v["vhid"]),
                                interface=v["interface"])) == (v["state"] == "MASTER")
                    for v in st["vips"])
    # Role changes are written within TEXTFILE_MIN_GAP (1 s), well before the 5 s period.
    assert lab.wait_for(lambda: all(agrees(m) for m in lab.members), 4, 0.1)
    assert textfile("fw1")[key("fwcluster_carp_maintenance")] == 1
    assert textfile("fw2")[key("fwcluster_carp_master", vhid="1", interface="lan0")] == 1
    for m in lab.members:
        assert sorted(p.name for p in prom[m].parent.iterdir()) == ["carpd.prom"]  # no temp files

    # The control command returns the same text format.
    reply = lab.control("fw2", {"cmd": "metrics"})
    assert reply["ok"] and samples(reply["text"])[key("fwcluster_carp_info", node="fw2",
                                                      cluster="lab")] == 1

    # A clean stop leaves the released state in the textfile.
    lab.stop_daemon("fw2", "carpd")
    got = textfile("fw2")
    assert all(got[key("fwcluster_carp_master", vhid=str(v["vhid"]), interface=v["interface"])] == 0
               for v in lab.vips)
