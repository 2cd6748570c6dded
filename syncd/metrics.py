"""syncd's Prometheus metrics, made from its status object (pure).

Built from exactly what `{"cmd":"status"}` returns (`fwctl sync --json`),
so a scrape and fwctl can never disagree. The families are prometheus_client's;
rendering and the HTTP/textfile outputs are fwcluster.metrics'.
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fwcluster import buildinfo

PEER_STATES = ("unknown", "up", "down")
RESYNC_STATES = ("pending", "done", "absent")
# Reasons a datagram is dropped before it reaches a peer's stream (wire
# checks, then sender and replay checks): each always has a series, so an
# alert on one does not see it appear from nothing.
DROP_REASONS = ("truncated", "bad_magic", "bad_version", "bad_auth", "bad_type", "malformed",
                "unknown_peer", "misdirected", "replay")
# Drops attributed to a peer (status peer counter -> reason label).
PEER_DROPS = {"replay": "replay", "auth": "bad_auth", "stale": "stale_generation"}

# Per-peer counters: status key -> (metric name, help).
PEER_COUNTERS = {
    "msgs_sent": ("messages_sent", "Sync datagrams sent to the peer (every type, resends included)"),
    "msgs_received": ("messages_received", "Authentic sync datagrams received from the peer (every type)"),
    "msgs_acked": ("messages_acked", "Reliable messages (entries, resync done) the peer acknowledged"),
    "msgs_resent": ("messages_resent", "Messages sent to the peer again (NACK or timer)"),
    "msgs_lost": ("messages_lost", "Messages the peer asked for after they left the resend "
                  "queue (repaired by a bulk transfer)"),
    "entries_sent": ("entries_sent", "Conntrack entries sent to the peer (each counted once, "
                     "not per resend)"),
    "entries_received": ("entries_received", "Conntrack entries received from the peer, in order"),
    "expectations_received": ("expectations_received", "Conntrack expectations (created or "
                              "ended) received from the peer, in order"),
    "nacks_sent": ("nacks_sent", "NACKs sent to the peer (gaps in its stream)"),
    "nacks_received": ("nacks_received", "NACKs received from the peer"),
    "duplicates": ("duplicates", "Messages from the peer already delivered"),
    "bulk_sent": ("bulk_transfers_sent", "Bulk transfers (whole table) sent to the peer"),
    "bulk_received": ("bulk_transfers_received", "Bulk transfer messages received from the peer"),
    "digests_sent": ("digests_sent", "Anti-entropy digests of our own entries sent to the peer"),
    "digests_received": ("digests_received", "Anti-entropy digests received from the peer"),
    "ranges_differing": ("digest_ranges_differing", "Ranges whose digest from the peer "
                         "differed from what we hold from it (each asked to be repaired)"),
    "ranges_repaired": ("digest_ranges_repaired", "Ranges the peer asked for, sent whole"),
    "repair_entries_sent": ("repair_entries_sent", "Entries sent in repaired ranges"),
    "stale_deleted": ("stale_entries_deleted", "Entries of the peer deleted here because its "
                      "repaired ranges no longer held them"),
    "views_dropped": ("views_dropped", "Times the peer started a new run and what it had told "
                      "us was left to the kernel's timeouts"),
}

# Daemon counters: status["counters"] key -> (metric name, help).
DAEMON_COUNTERS = {
    "events": ("conntrack_events", "Conntrack events read from the kernel"),
    "events_skipped": ("conntrack_events_skipped", "Conntrack events not synced (policy: "
                       "own addresses, link-local, the sync link, [sync] filter)"),
    "overruns": ("event_overruns", "Kernel conntrack event overruns (ENOBUFS); each was "
                 "repaired by a full refresh"),
    "refreshes": ("full_refreshes", "Whole-table refreshes sent to the peers"),
    "send_errors": ("send_errors", "Datagrams the kernel refused to send"),
    "applied_records": ("entries_applied", "Peer entries written to the kernel table"),
    "apply_skipped": ("entries_apply_skipped", "Peer entries not applied (policy)"),
    "expectations_sent": ("expectations_sent", "Conntrack expectations this member's helpers "
                          "made or ended, sent to the peers"),
    "expectations_created": ("expectations_created", "Peer expectations created in the kernel "
                             "(or already there)"),
    "expectations_failed": ("expectations_failed", "Peer expectations the kernel refused "
                            "(other than for a missing master)"),
    "expectations_dropped": ("expectations_dropped", "Peer expectations dropped because their "
                             "master was not in the table within 2 s"),
    "role_resyncs": ("role_resyncs", "Bulk transfers asked for after losing the master role"),
    "stateless_refreshed": ("stateless_refreshed", "Non-TCP entries re-sent to keep them "
                            "alive on the peers"),
    "hearsay_skipped": ("bulk_hearsay_skipped", "Entries of a peer's bulk transfer it does not "
                        "originate, of flows this member forwards: not applied"),
    "ours_kept": ("peer_deletes_ignored", "Peers' deletes of flows this member forwards, not "
                  "applied (their copies ran out; the flow lives here)"),
    "deletes_withheld": ("deletes_withheld", "Local deletes of flows another member forwards "
                         "(an expired copy), not sent to the peers"),
    "claims": ("claims", "Times this member began forwarding flows it did not (a handover) "
               "and claimed them at once"),
    "yields": ("yields", "Times this member stopped forwarding flows it did (a handover) and "
               "looked for young ones to hand over"),
    "handover_sent": ("handover_sent", "Young entries (answered, not yet assured) of flows this "
                      "member stopped forwarding, sent to the new owner at once"),
    "claim_refreshes": ("claim_refreshes", "Table dumps sent as this member's after a claim"),
    "bulks_restarted": ("bulks_restarted", "Bulk transfers started over because the change "
                        "log overflowed (watch bound)"),
    "rounds_abandoned": ("rounds_abandoned", "Anti-entropy rounds abandoned because the change "
                         "log overflowed (watch bound)"),
    "callback_errors": ("callback_errors", "Errors contained in work that cannot corrupt the "
                        "sync state (control requests that read, metrics, address refresh, "
                        "config channel connections, reload)"),
}
KERNEL_RESULTS = ("created", "updated", "deleted", "kept", "failed")
CONFIG_COUNTERS = {
    "pushes_received": ("config_pushes_received", "Config pushes received from a peer"),
    "pushes_refused": ("config_pushes_refused", "Config pushes refused (validation failed)"),
    "catch_ups": ("config_catch_ups", "Newer configs fetched from a peer after being stale"),
}
CONFIG_DROPS = {"auth_drops": "bad_auth", "malformed": "malformed", "oversize": "oversize",
                "busy_drops": "busy", "preauth_displaced": "displaced"}


def _gauge(name: str, help: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"fwcluster_sync_{name}", help, labels=labels)


def _counter(name: str, help: str, *labels: str) -> CounterMetricFamily:
    # Named with _total: the library takes it off the family and puts it
    # back on the TYPE line and every sample, so the exposed name is this.
    return CounterMetricFamily(f"fwcluster_sync_{name}_total", help, labels=labels)


def _one(family: Metric, value: float) -> Metric:
    """An unlabelled family with its one sample."""
    family.add_metric([], value)
    return family


def families(status: dict) -> list[Metric]:
    """Metric families for one syncd status (see docs/metrics.md)."""
    info = _gauge("info", "syncd of this member (labels: node, cluster)", "node", "cluster")
    info.add_metric([str(status.get("node")), str(status.get("cluster"))], 1)
    in_sync = _one(_gauge("in_sync", "1 once every peer has answered the bulk resync (or is "
                          "absent)"), int(bool(status.get("in_sync"))))
    demotion = _one(_gauge("demotion", "Demotion syncd asks carpd for (0 once in sync)"),
                    status.get("demotion", 0))
    carpd = _one(_gauge("carpd_linked", "1 while syncd is connected to carpd's control socket"),
                 int(bool(status.get("carpd"))))
    local = _one(_gauge("local_entries", "Entries in this member's conntrack table"),
                 status.get("local_entries", 0))
    epoch = _one(_gauge("epoch", "This run's epoch (grows on every start)"),
                 status.get("epoch", 0))
    drops = _counter("drops", "Sync datagrams dropped, by reason", "reason")
    got = status.get("drops") or {}
    for reason in sorted(set(DROP_REASONS) | set(got)):
        drops.add_metric([reason], got.get(reason, 0))
    out = [info, in_sync, demotion, carpd, local, epoch, drops]
    out += peer_families(status.get("peers") or {})
    out += link_families(status)
    out += daemon_families(status)
    if isinstance(status.get("config"), dict):
        out += config_families(status["config"])
    out.append(buildinfo.family("syncd", status.get("release")))
    return out


def peer_families(peers: dict) -> list[Metric]:
    """One series per peer (label `peer`)."""
    up = _gauge("peer_up", "1 while the peer is heard from (state up)", "peer")
    state = _gauge("peer_state", "1 for the state the peer is in, 0 for the others",
                   "peer", "state")
    resync = _gauge("peer_resync", "1 for the state of our bulk resync from the peer",
                    "peer", "state")
    seen = _gauge("peer_last_seen_seconds", "Seconds since the peer's last authentic message "
                  "(+Inf: never)", "peer")
    table = _gauge("peer_entries", "Entries in the peer's conntrack table, as it reports them",
                   "peer")
    unacked = _gauge("peer_unacked_messages", "Messages sent to the peer and not yet acknowledged",
                     "peer")
    lag = _gauge("lag_seconds", "Age of the oldest message the peer has not acknowledged "
                 "(0: all acknowledged)", "peer")
    proto = _gauge("peer_protocol_version", "Sync wire version in use with the peer (the newest "
                   "both speak; no series until it is heard)", "peer")
    release = _gauge("peer_release_info", "Release the peer runs, as its sync ALIVE tells "
                     "(always 1; no series for a peer that does not tell)", "peer", "version")
    foreign = _gauge("peer_unintelligible", "1 while the peer sends sync datagrams of a version "
                     "this member does not speak (never counted absent: see fwctl sync)", "peer")
    counters = {k: _counter(name, help, "peer") for k, (name, help) in PEER_COUNTERS.items()}
    drops = _counter("peer_drops", "Datagrams from the peer dropped, by reason", "peer", "reason")
    for name, p in sorted(peers.items()):
        up.add_metric([name], int(p.get("state") == "up"))
        for s in PEER_STATES:
            state.add_metric([name, s], int(p.get("state") == s))
        for s in RESYNC_STATES:
            resync.add_metric([name, s], int(p.get("resync") == s))
        last = p.get("last_seen")
        seen.add_metric([name], float("inf") if last is None else last)
        if p.get("table_size") is not None:  # unknown until the peer's first ALIVE
            table.add_metric([name], p["table_size"])
        unacked.add_metric([name], p.get("unacked", 0))
        lag.add_metric([name], p.get("lag", 0.0))
        if p.get("sync_version") is not None:
            proto.add_metric([name], p["sync_version"])
        if p.get("version"):
            release.add_metric([name, str(p["version"])], 1)
        foreign.add_metric([name], int(p.get("unintelligible") is not None))
        for k, fam in counters.items():
            fam.add_metric([name], p.get(k, 0))
        for k, reason in PEER_DROPS.items():
            drops.add_metric([name, reason], p.get(k, 0))
    return [up, state, resync, seen, table, unacked, lag, proto, release, foreign,
            *counters.values(), drops]


def link_families(status: dict) -> list[Metric]:
    """The sync links ([sync] interfaces): one at 0 is a degraded cluster
    that a second cut would leave without replication."""
    up = _gauge("link_up", "1 while the sync link has carrier and every peer answers on it",
                "interface")
    for name, link in (status.get("links") or {}).items():
        up.add_metric([name], int(bool(link.get("up"))))
    switches = _counter("link_switches", "Moves of a peer's stream from one sync link to "
                        "another", "peer")
    for name, p in sorted((status.get("peers") or {}).items()):
        switches.add_metric([name], p.get("link_switches", 0))
    return [up, switches]


def daemon_families(status: dict) -> list[Metric]:
    c = status.get("counters") or {}
    out = [_one(_counter(name, help), c.get(k, 0)) for k, (name, help) in DAEMON_COUNTERS.items()]
    kernel = status.get("kernel") or {}
    writes = _counter("kernel_writes", "Peer entries written to the kernel table, by result "
                      "(kept: already present and left alone)", "result")
    for result in KERNEL_RESULTS:
        writes.add_metric([result], kernel.get(result, 0))
    out.append(writes)
    return out


def config_families(cfg: dict) -> list[Metric]:
    """Config sync (status["config"], syncd/configchannel.py)."""
    gen = _one(_gauge("config_generation", "Generation of the config this member runs"),
               cfg.get("generation") or 0)
    stale = _one(_gauge("config_stale", "1 while a reachable peer runs a newer config generation"),
                 int(bool(cfg.get("stale"))))
    peer_gen = _gauge("config_peer_generation", "Config generation a peer last reported", "peer")
    reachable = _gauge("config_peer_reachable", "1 when the last config poll reached the peer",
                       "peer")
    for name, p in sorted((cfg.get("peers") or {}).items()):
        reachable.add_metric([name], int(bool(p.get("reachable"))))
        if p.get("generation") is not None:
            peer_gen.add_metric([name], p["generation"])
    c = cfg.get("counters") or {}
    out = [gen, stale, peer_gen, reachable]
    out += [_one(_counter(name, help), c.get(k, 0)) for k, (name, help) in CONFIG_COUNTERS.items()]
    drops = _counter("config_drops", "Config channel requests dropped, by reason", "reason")
    for k, reason in CONFIG_DROPS.items():
        drops.add_metric([reason], c.get(k, 0))
    out.append(drops)
    return out


def health(status: dict) -> tuple:
    """What an operator must learn of at once (the textfile is rewritten
    within a second when it changes, otherwise on its period)."""
    peers = status.get("peers") or {}
    cfg = status.get("config") or {}
    return (bool(status.get("in_sync")), status.get("demotion"), bool(status.get("carpd")),
            tuple(sorted((n, p.get("state"), p.get("resync")) for n, p in peers.items())),
            tuple(sorted((n, bool(k.get("up"))) for n, k in (status.get("links") or {}).items())),
            bool(cfg.get("stale")), cfg.get("generation"))
