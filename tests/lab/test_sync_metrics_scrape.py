"""syncd metrics in the lab: two members running carpd and syncd with metrics
on; syncd's endpoint (port of [metrics] listen + 1) scraped from inside each
member's namespace and parsed with prometheus_client's parser, checked
against `fwctl sync --json`; a forged datagram counted; the node-exporter
textfile following a peer going down; the control command."""
from __future__ import annotations

from carp_helpers import fast, wait_settled
from syncd.core import wire
from tests.labkit import CLIENT4, PY, SERVER4, member_addr4
from sync_helpers import ct_count, in_sync, logs, start_member, syncd_status
from tests.prom_text import (between, key, listening, metrics_config, read_textfile, samples,
                             scrape, scrape_between, textfile_path)

LISTEN = "127.0.0.1:9780"          # carpd; syncd serves on 9781
SYNCD = "127.0.0.1:9781"
ENTRIES = 20


def check_against_status(got: dict, before: dict, after: dict) -> None:
    """Scraped between two `fwctl sync --json`: settled values equal the
    status, counters (and ages) lie between the two."""
    assert got[key("fwcluster_sync_info", node=before["node"], cluster=before["cluster"])] == 1
    assert got[key("fwcluster_sync_in_sync")] == before["in_sync"] == after["in_sync"] is True
    assert got[key("fwcluster_sync_demotion")] == before["demotion"] == 0
    assert got[key("fwcluster_sync_carpd_linked")] == int(before["carpd"]) == 1
    assert got[key("fwcluster_sync_epoch")] == before["epoch"]
    assert between(got[key("fwcluster_sync_local_entries")], before["local_entries"],
                   after["local_entries"])
    for reason, n in before["drops"].items():
        assert between(got[key("fwcluster_sync_drops_total", reason=reason)], n, after["drops"][reason])
    for name, p0 in before["peers"].items():
        p1 = after["peers"][name]
        assert p0["state"] == p1["state"] == "up" and p0["resync"] == "done"
        assert got[key("fwcluster_sync_peer_up", peer=name)] == 1
        assert got[key("fwcluster_sync_peer_state", peer=name, state="up")] == 1
        assert got[key("fwcluster_sync_peer_resync", peer=name, state="done")] == 1
        assert between(got[key("fwcluster_sync_peer_entries", peer=name)],
                       p0["table_size"], p1["table_size"])
        for status_key in ("msgs_sent", "msgs_received", "msgs_acked", "msgs_resent", "msgs_lost",
                           "entries_sent", "entries_received"):
            metric = status_key.replace("msgs_", "messages_")
            assert between(got[key(f"fwcluster_sync_{metric}_total", peer=name)],
                           p0[status_key], p1[status_key]), status_key
        for status_key, reason in (("replay", "replay"), ("auth", "bad_auth")):
            assert between(got[key("fwcluster_sync_peer_drops_total", peer=name, reason=reason)],
                           p0[status_key], p1[status_key])
        # Ages: the peer speaks every 0.5 s; lag is the oldest unacknowledged message.
        assert 0 <= got[key("fwcluster_sync_peer_last_seen_seconds", peer=name)] < 2
        assert 0 <= got[key("fwcluster_sync_lag_seconds", peer=name)] < 2
    cfg = before["config"]
    assert got[key("fwcluster_sync_config_generation")] == cfg["generation"]
    assert got[key("fwcluster_sync_config_stale")] == int(cfg["stale"]) == 0


def peer(lab, member: str, name: str) -> dict:
    return syncd_status(lab, member).get("peers", {}).get(name, {})


def insert_entries(lab, member: str, n: int) -> None:
    """Forwarded-looking TCP entries (client -> server) in member's table."""
    for i in range(n):
        lab.run(member, ["conntrack", "-I", "-p", "tcp", "-s", CLIENT4, "-d", SERVER4,
                         "--sport", str(20000 + i), "--dport", "80", "--state", "ESTABLISHED",
                         "-t", "600", "-u", "SEEN_REPLY,ASSURED"])


def forge(lab, src: str, dst_member: str) -> None:
    """One datagram with a sync header and a wrong MAC, from src's sync address."""
    dst = member_addr4(lab.index(dst_member), "sync")
    # A well-formed header of the current wire version, so it is the MAC that fails.
    forged = wire.MAGIC + bytes([wire.NEWEST]) + bytes(wire.HEADER.size + wire.MAC_LEN)
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.sendto({forged!r}, ('{dst}', 3780))")
    lab.run(src, [PY, "-c", code])


def test_syncd_metrics_endpoint_textfile_and_command(carp_lab):
    lab = carp_lab(members=2, ipv6=False)
    lab.write_config(**fast(2), metrics=metrics_config(lab, LISTEN))
    for m in lab.members:
        start_member(lab, m)
    wait_settled(lab, "fw1", timeout=20)
    assert lab.wait_for(lambda: in_sync(lab), 20), logs(lab)

    insert_entries(lab, "fw1", ENTRIES)
    # Replicated, and fw2's size reported back to fw1 (ALIVE; sizes refresh every 2 s).
    assert lab.wait_for(lambda: ct_count(lab, "fw2") >= ENTRIES and in_sync(lab)
                        and (peer(lab, "fw1", "fw2").get("table_size") or 0) >= ENTRIES,
                        15, 0.25), logs(lab)
    forge(lab, "fw2", "fw1")
    assert lab.wait_for(lambda: syncd_status(lab, "fw1").get("drops", {}).get("bad_auth") == 1, 5, 0.1), \
        syncd_status(lab, "fw1").get("drops")

    for m in lab.members:
        check_against_status(*scrape_between(lab, m, SYNCD, "sync"))
        # The namespace's loopback only, next to carpd's port.
        assert listening(lab, m, 9780, 9781) == [LISTEN, SYNCD]
    got1 = scrape(lab, "fw1", SYNCD)
    assert got1[key("fwcluster_sync_drops_total", reason="bad_auth")] == 1
    assert got1[key("fwcluster_sync_peer_drops_total", peer="fw2", reason="bad_auth")] == 1
    assert got1[key("fwcluster_sync_entries_sent_total", peer="fw2")] >= ENTRIES
    assert scrape(lab, "fw2", SYNCD)[key("fwcluster_sync_entries_received_total", peer="fw1")] >= ENTRIES

    # The textfile: syncd.prom next to carpd.prom, following fw2's syncd going
    # away (down after 2 s of silence) within a second, not the 5 s period.
    prom = {m: textfile_path(lab, m, "syncd") for m in lab.members}

    def textfile(m):
        return read_textfile(prom[m])
    assert textfile("fw1").get(key("fwcluster_sync_peer_up", peer="fw2")) == 1
    lab.stop_daemon("fw2", "syncd")
    assert lab.wait_for(lambda: textfile("fw1").get(key("fwcluster_sync_peer_up", peer="fw2")) == 0,
                        6, 0.1), logs(lab, "fw1")
    st = lab.fwctl("fw1", "sync")
    assert st["peers"]["fw2"]["state"] == "down"
    assert textfile("fw1")[key("fwcluster_sync_peer_state", peer="fw2", state="down")] == 1
    for m in lab.members:
        assert sorted(p.name for p in prom[m].parent.iterdir()) == ["carpd.prom", "syncd.prom"]

    # The control command returns the same text format.
    reply = lab.control("fw1", {"cmd": "metrics"}, daemon="syncd")
    assert reply["ok"]
    got = samples(reply["text"])
    assert got[key("fwcluster_sync_info", node="fw1", cluster="lab")] == 1
    assert got[key("fwcluster_sync_peer_up", peer="fw2")] == 0
