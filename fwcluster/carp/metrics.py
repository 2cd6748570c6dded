"""carpd's Prometheus metrics, made from its status object (pure).

Built from exactly what `{"cmd":"status"}` returns, so a scrape and
`fwctl status --json` can never disagree. The families are prometheus_client's;
rendering and the HTTP/textfile outputs are fwcluster.metrics'.
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fwcluster import buildinfo
from fwcluster.carp.core.wire import DROP_REASONS

STATES = ("INIT", "BACKUP", "MASTER")
# Demotion sources that always have a series (0 when inactive), so that an
# alert on them does not see the series vanish when the source clears.
STANDING_SOURCES = ("maintenance", "syncd")
VIP = ("vhid", "interface")  # the labels that name a vip


def families(status: dict, interfaces: tuple[str, ...] = ()) -> list[Metric]:
    """Metric families for one carpd status (see docs/metrics.md)."""
    info = GaugeMetricFamily("fwcluster_carp_info", "carpd of this member (labels: node, cluster)",
                             labels=("node", "cluster"))
    info.add_metric([str(status.get("node")), str(status.get("cluster"))], 1)

    state = GaugeMetricFamily("fwcluster_carp_state",
                              "1 for the CARP state each vhid is in, 0 for the others",
                              labels=(*VIP, "address", "state"))
    master = GaugeMetricFamily("fwcluster_carp_master",
                               "1 while this member is master of the vhid", labels=VIP)
    # Counter names are given with _total: the library takes it off the
    # family and puts it back on the TYPE line and every sample.
    trans = CounterMetricFamily("fwcluster_carp_transitions_total",
                                "Role changes of the vhid since carpd started", labels=VIP)
    sent = CounterMetricFamily("fwcluster_carp_adverts_sent_total", "CARP adverts sent",
                               labels=VIP)
    recv = CounterMetricFamily("fwcluster_carp_adverts_received_total",
                               "Authentic CARP adverts received", labels=VIP)
    drops = CounterMetricFamily("fwcluster_carp_drops_total", "CARP packets dropped, by reason",
                                labels=(*VIP, "reason"))
    interval = GaugeMetricFamily("fwcluster_carp_advert_interval_seconds",
                                 "Configured advert interval of this member: advbase + advskew/256",
                                 labels=VIP)
    hversion = GaugeMetricFamily("fwcluster_carp_hardened_version",
                                 "Hardened CARP version the vhid's adverts go out at (the newest "
                                 "every member heard on it speaks)", labels=VIP)
    for v in status.get("vips", []):
        who = [str(v["vhid"]), str(v["interface"])]
        for s in STATES:
            state.add_metric([*who, str(v["address"]), s], int(v["state"] == s))
        master.add_metric(who, int(v["state"] == "MASTER"))
        trans.add_metric(who, v["transitions"])
        c = v.get("counters", {})
        sent.add_metric(who, c.get("adverts_sent", 0))
        recv.add_metric(who, c.get("adverts_received", 0))
        # Every reason of both modes (hardened adds "unhardened" and "stale")
        # has a series, 0 until it happens: an alert never sees one appear.
        seen = c.get("drops", {})
        for reason in sorted(set(DROP_REASONS) | set(seen)):
            drops.add_metric([*who, reason], seen.get(reason, 0))
        interval.add_metric(who, v["advbase"] + v["advskew"] / 256)
        if v.get("hardened_version") is not None:
            hversion.add_metric(who, v["hardened_version"])

    demotion = GaugeMetricFamily("fwcluster_carp_demotion",
                                 "Total demotion of this member (carried in its adverts)",
                                 value=status.get("demotion", 0))
    by_source = GaugeMetricFamily("fwcluster_carp_demotion_source", "Demotion by source",
                                  labels=("source",))
    sources = dict.fromkeys(STANDING_SOURCES, 0)
    sources.update({f"link:{i}": 0 for i in interfaces})
    sources.update(status.get("demotion_sources") or {})
    for name, value in sorted(sources.items()):
        by_source.add_metric([name], value)
    maint = GaugeMetricFamily("fwcluster_carp_maintenance", "1 while maintenance mode is on",
                              value=int(bool(status.get("maintenance"))))
    preempt = GaugeMetricFamily("fwcluster_carp_preempt", "1 when preemption is on",
                                value=int(bool(status.get("preempt"))))
    hardened = GaugeMetricFamily("fwcluster_carp_hardened",
                                 "1 when adverts are hardened ([carp] mode), 0 when compatible",
                                 value=int(status.get("mode") == "hardened"))
    out = [info, state, master, trans, sent, recv, drops, interval, hversion, demotion, by_source,
           maint, preempt, hardened, *track_families(status.get("tracks") or []),
           *hook_families(status.get("hooks") or {})]
    if status.get("buckets"):
        out += bucket_families(status["buckets"])
    out.append(buildinfo.family("carpd", status.get("release")))
    return out


def track_families(tracks: list[dict]) -> list[Metric]:
    """[[track]]: each track's state, weight and last check (docs/tracking.md)."""
    label = ("track", "type")
    failed = GaugeMetricFamily("fwcluster_carp_track_failed",
                               "1 while the track counts as failed (and demotes by its weight)",
                               labels=label)
    held = GaugeMetricFamily("fwcluster_carp_track_held",
                             "1 while the track is held failed by its flap_limit", labels=label)
    weight = GaugeMetricFamily("fwcluster_carp_track_weight",
                               "Demotion the track adds while failed", labels=label)
    last = GaugeMetricFamily("fwcluster_carp_track_last_ok",
                             "1 when the track's last check succeeded (after reverse)", labels=label)
    age = GaugeMetricFamily("fwcluster_carp_track_last_check_age_seconds",
                            "Seconds since the track's last check", labels=label)
    changes = GaugeMetricFamily("fwcluster_carp_track_changes_last_minute",
                                "Times the track changed state in the last 60 s", labels=label)
    for t in tracks:
        who = [str(t["name"]), str(t["type"])]
        failed.add_metric(who, int(bool(t["failed"])))
        held.add_metric(who, int(t["state"] == "held"))
        weight.add_metric(who, t["weight"])
        last.add_metric(who, int(bool(t["last_ok"])))
        if t.get("last_age") is not None:
            age.add_metric(who, t["last_age"])
        changes.add_metric(who, t["changes_last_minute"])
    return [failed, held, weight, last, age, changes]


def hook_families(h: dict) -> list[Metric]:
    """Role hooks run, failed (non-zero exit, killed, not runnable), dropped."""
    return [CounterMetricFamily("fwcluster_carp_hook_runs_total", "Role hooks started",
                                value=h.get("runs", 0)),
            CounterMetricFamily("fwcluster_carp_hook_failures_total",
                                "Role hooks that exited non-zero, were killed or could not run",
                                value=h.get("failures", 0)),
            CounterMetricFamily("fwcluster_carp_hook_events_dropped_total",
                                "Role changes whose hooks never ran: the queue was full",
                                value=h.get("dropped", 0))]


def bucket_families(b: dict) -> list[Metric]:
    """Active-active balancing: the buckets this member serves."""
    owned = set(b.get("owned", []))
    total = GaugeMetricFamily("fwcluster_carp_buckets", "Hash buckets of active-active balancing",
                              value=b.get("count", 0))
    mine = GaugeMetricFamily("fwcluster_carp_buckets_owned", "Buckets this member serves",
                             value=len(owned))
    per = GaugeMetricFamily("fwcluster_carp_bucket_owned", "1 while this member serves the bucket",
                            labels=("bucket",))
    for row in b.get("per_bucket", []):
        per.add_metric([str(row["bucket"])], int(row["bucket"] in owned))
    applied = GaugeMetricFamily(
        "fwcluster_carp_buckets_applied", "1 when the nftables set matches the owned buckets",
        value=int(b.get("applied") is not None and set(b["applied"]) == owned))
    return [total, mine, per, applied]
