"""syncd's metrics: made from its status object (here the real protocol core's
status after real exchanges), valid Prometheus text parsed by
prometheus_client, one series per peer."""
import re
from pathlib import Path

from fwcluster import metrics as prom
from syncd import metrics
from syncd.core import keys, protocol, wire
from syncd.core.entry import OP_UPSERT, Entry
from syncd.core.protocol import Dump, Send, Sync
from tests.prom_text import key, samples

ROOT = Path(__file__).resolve().parents[2]
KEY = keys.sync_key(b"secret", "edge")
MEMBERS = [("fw1", "203.0.113.1"), ("fw2", "203.0.113.2"), ("fw3", "203.0.113.3")]
ADDR = dict(MEMBERS)


def entry(i: int) -> Entry:
    return Entry(4, 6, 0, "192.0.2.100", "198.51.100.100", 1024 + i, 80,
                 "198.51.100.100", "192.0.2.100", 80, 1024 + i, status=14,
                 timeout=300, tcp_state=3)


def exchange(nodes: dict, now: float, drop_to=()) -> list:
    """Carry Send actions between the nodes until quiet (a bulk transfer sends an
    empty table); returns the datagrams."""
    carried = []
    for _ in range(100):
        flight = []
        for name, n in nodes.items():
            for a in n.drain():
                if isinstance(a, Send):
                    flight.append((name, a))
                elif isinstance(a, Dump):
                    n.bulk(a.peer, [], now)  # an empty table
        if not flight:
            return carried
        for src, a in flight:
            dst = next(n for n, addr in ADDR.items() if addr == a.addr)
            carried.append(a.data)
            if dst in nodes and dst not in drop_to:
                nodes[dst].datagram(ADDR[src], a.data, now)
        for n in nodes.values():
            n.flush(now)
    raise AssertionError("did not settle")


def sync_status() -> dict:
    """fw1's status after it sent 3 entries to fw2 (acknowledged), a replayed
    datagram, a forged one; fw3 never answered in a version fw1 speaks."""
    about = wire.About("0.3.0", (("sync", 2, 3),))
    nodes = {n: Sync(MEMBERS, n, KEY, 100, 0.0, about=about) for n in ("fw1", "fw2")}
    for n in nodes.values():
        n.tick(0.0)
    exchange(nodes, 0.0)
    nodes["fw1"].local([(OP_UPSERT, entry(i)) for i in range(3)], 0.1)
    nodes["fw1"].flush(0.1)
    data = exchange(nodes, 0.1)
    nodes["fw2"].local_entries = 17
    for now in (0.5, 1.0, 1.5):     # idle: ALIVE carries each one's table size (and, once
        for n in nodes.values():   # each has heard the other speaks 3, its release)
            n.tick(now)
        exchange(nodes, now)
    nodes["fw1"].datagram(ADDR["fw2"], data[-1], 1.7)           # a replay (fw2 -> fw1 last)
    nodes["fw1"].datagram(ADDR["fw2"], b"FS\x02" + bytes(120), 1.7)  # forged: bad MAC
    nodes["fw1"].datagram(ADDR["fw3"], b"FS\x04" + bytes(120), 1.8)  # a version fw1 does not speak
    nodes["fw1"].local_entries = 42
    return nodes["fw1"].status(2.0)


def daemon_status(sync: dict) -> dict:
    """The daemon's part of status (syncd/daemon.py Daemon.status)."""
    return {"node": "fw1", "cluster": "edge", "sync_address": "203.0.113.1", "port": 3780,
            "carpd": True, "demotion": 0, "roles": {"1": "MASTER"},
            "kernel": {"created": 5, "updated": 2, "deleted": 1, "kept": 0, "failed": 0,
                       "own_events": 0},
            "last_error": "", "counters": {"events": 10, "events_skipped": 4, "overruns": 1,
                                           "refreshes": 1, "send_errors": 0,
                                           "applied_records": 8, "apply_skipped": 0,
                                           "role_resyncs": 0, "stateless_refreshed": 0},
            "config": {"generation": 7, "digest": "ab", "origin": "fw2", "stale": True,
                       "newer_on": ["fw2"], "peers_behind": [],
                       "peers": {"fw2": {"generation": 8, "digest": "cd", "reachable": True,
                                         "last_seen": 1.0, "error": None},
                                 "fw3": {"generation": None, "digest": None, "reachable": False,
                                         "last_seen": None, "error": "timed out"}},
                       "last_error": None, "last_catch_up": None,
                       "counters": {"auth_drops": 2, "malformed": 1, "pushes_received": 3,
                                    "pushes_refused": 1, "catch_ups": 0}},
            **sync}


def test_families_carry_the_status_values():
    st = daemon_status(sync_status())
    got = samples(prom.render(metrics.families(st)))
    p2, p3 = st["peers"]["fw2"], st["peers"]["fw3"]
    assert got[key("fwcluster_sync_info", node="fw1", cluster="edge")] == 1
    assert got[key("fwcluster_sync_in_sync")] == int(st["in_sync"])
    assert got[key("fwcluster_sync_demotion")] == 0
    assert got[key("fwcluster_sync_carpd_linked")] == 1
    assert got[key("fwcluster_sync_local_entries")] == 42
    assert got[key("fwcluster_sync_epoch")] == 100
    # Peer state and liveness.
    assert p2["state"] == "up" and p3["state"] == "unknown"
    assert got[key("fwcluster_sync_peer_up", peer="fw2")] == 1
    assert got[key("fwcluster_sync_peer_up", peer="fw3")] == 0
    for s in metrics.PEER_STATES:
        assert got[key("fwcluster_sync_peer_state", peer="fw2", state=s)] == (s == "up")
    for s in metrics.RESYNC_STATES:
        assert got[key("fwcluster_sync_peer_resync", peer="fw2", state=s)] == (p2["resync"] == s)
        assert got[key("fwcluster_sync_peer_resync", peer="fw3", state=s)] == (p3["resync"] == s)
    assert p2["resync"] == "done" and p3["resync"] == "pending"
    assert got[key("fwcluster_sync_peer_last_seen_seconds", peer="fw2")] == p2["last_seen"] > 0
    assert got[key("fwcluster_sync_peer_last_seen_seconds", peer="fw3")] == float("inf")
    # Messages and entries: fw2 acknowledged all three entries.
    assert p2["entries_sent"] == 3 and p2["msgs_acked"] >= 1
    for status_key, (name, _help) in metrics.PEER_COUNTERS.items():
        assert got[key(f"fwcluster_sync_{name}_total", peer="fw2")] == p2[status_key]
        assert got[key(f"fwcluster_sync_{name}_total", peer="fw3")] == p3[status_key]
    assert got[key("fwcluster_sync_peer_unacked_messages", peer="fw2")] == p2["unacked"] == 0
    assert got[key("fwcluster_sync_lag_seconds", peer="fw2")] == p2["lag"] == 0
    # fw3 never answered: what was queued for it waits, and its lag grows.
    assert got[key("fwcluster_sync_lag_seconds", peer="fw3")] == p3["lag"] > 0
    # Drops: the replay and the forgery, counted overall and per peer.
    assert got[key("fwcluster_sync_drops_total", reason="replay")] == st["drops"]["replay"] == 1
    assert got[key("fwcluster_sync_drops_total", reason="bad_auth")] == st["drops"]["bad_auth"] == 1
    assert got[key("fwcluster_sync_drops_total", reason="truncated")] == 0
    assert got[key("fwcluster_sync_peer_drops_total", peer="fw2", reason="replay")] == 1
    assert got[key("fwcluster_sync_peer_drops_total", peer="fw2", reason="bad_auth")] == 1
    assert got[key("fwcluster_sync_peer_drops_total", peer="fw3", reason="replay")] == 0
    # Table sizes: fw2 reported its own in ALIVE; fw3's is unknown (no series).
    assert got[key("fwcluster_sync_peer_entries", peer="fw2")] == p2["table_size"] == 17
    assert key("fwcluster_sync_peer_entries", peer="fw3") not in got
    # Versions: fw2 speaks 3 and told its release; fw3 sends a version fw1 does not speak.
    assert got[key("fwcluster_sync_peer_protocol_version", peer="fw2")] == p2["sync_version"] == 3
    assert key("fwcluster_sync_peer_protocol_version", peer="fw3") not in got
    assert got[key("fwcluster_sync_peer_release_info", peer="fw2", version="0.3.0")] == 1
    assert got[key("fwcluster_sync_peer_unintelligible", peer="fw2")] == 0
    assert got[key("fwcluster_sync_peer_unintelligible", peer="fw3")] == 1 and p3["unintelligible"] == 4
    # Daemon counters and kernel writes.
    assert got[key("fwcluster_sync_conntrack_events_total")] == 10
    assert got[key("fwcluster_sync_event_overruns_total")] == 1
    assert got[key("fwcluster_sync_entries_applied_total")] == 8
    assert got[key("fwcluster_sync_kernel_writes_total", result="created")] == 5
    assert got[key("fwcluster_sync_kernel_writes_total", result="failed")] == 0
    # Config sync: stale while fw2 runs a newer generation.
    assert got[key("fwcluster_sync_config_generation")] == 7
    assert got[key("fwcluster_sync_config_stale")] == 1
    assert got[key("fwcluster_sync_config_peer_generation", peer="fw2")] == 8
    assert key("fwcluster_sync_config_peer_generation", peer="fw3") not in got
    assert got[key("fwcluster_sync_config_peer_reachable", peer="fw3")] == 0
    assert got[key("fwcluster_sync_config_pushes_refused_total")] == 1
    assert got[key("fwcluster_sync_config_drops_total", reason="bad_auth")] == 2


def test_every_peer_counter_of_the_protocol_is_exported():
    exported = set(metrics.PEER_COUNTERS) | set(metrics.PEER_DROPS)
    assert set(protocol._counters()) == exported


def test_every_drop_reason_has_a_standing_series():
    """Each reason wire.py raises or protocol.py counts has a series (0
    until it happens), so alerts do not see series appear from nothing."""
    source = (ROOT / "syncd" / "core" / "wire.py").read_text() + (ROOT / "syncd" / "core" / "protocol.py").read_text()
    reasons = set(re.findall(r'(?:WireError|_drop)\("(\w+)"', source))
    assert reasons and reasons <= set(metrics.DROP_REASONS)
    got = samples(prom.render(metrics.families({"drops": {"bad_auth": 2}})))
    series = {dict(labels)["reason"]: v for (name, labels), v in got.items()
              if name == "fwcluster_sync_drops_total"}
    assert series == {r: (2 if r == "bad_auth" else 0) for r in metrics.DROP_REASONS}


def test_a_member_without_peers_or_config_still_renders():
    got = samples(prom.render(metrics.families({"node": "fw1", "cluster": "solo",
                                                "in_sync": True, "peers": {}})))
    assert got[key("fwcluster_sync_in_sync")] == 1
    assert not any(name.startswith("fwcluster_sync_config_") for name, _ in got)


def test_health_changes_with_peer_state_not_with_counters():
    st = daemon_status(sync_status())
    h = metrics.health(st)
    busier = {**st, "peers": {**st["peers"], "fw2": {**st["peers"]["fw2"], "msgs_sent": 999,
                                                      "last_seen": 9.0}}}
    assert metrics.health(busier) == h
    down = {**st, "peers": {**st["peers"], "fw2": {**st["peers"]["fw2"], "state": "down"}}}
    assert metrics.health(down) != h
    assert metrics.health({**st, "in_sync": not st["in_sync"]}) != h
    assert metrics.health({**st, "config": {**st["config"], "stale": False}}) != h
