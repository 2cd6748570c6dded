"""carpd's Prometheus metrics, made from its status object (pure).

Built from exactly what `{"cmd":"status"}` returns, so a scrape and
`fwctl status --json` can never disagree. Rendering and the HTTP/textfile
outputs are fwcluster.metrics'.
"""
from __future__ import annotations

from fwcluster.metrics import Family

STATES = ("INIT", "BACKUP", "MASTER")
# Demotion sources that always have a series (0 when inactive), so that an
# alert on them does not see the series vanish when the source clears.
STANDING_SOURCES = ("maintenance", "syncd")


def families(status: dict, interfaces: tuple[str, ...] = ()) -> list[Family]:
    """Metric families for one carpd status (see docs/metrics.md)."""
    info = Family("fwcluster_carp_info", "gauge", "carpd of this member (labels: node, cluster)")
    info.add(1, node=str(status.get("node")), cluster=str(status.get("cluster")))

    state = Family("fwcluster_carp_state", "gauge",
                   "1 for the CARP state each vhid is in, 0 for the others")
    master = Family("fwcluster_carp_master", "gauge", "1 while this member is master of the vhid")
    trans = Family("fwcluster_carp_transitions_total", "counter",
                   "Role changes of the vhid since carpd started")
    sent = Family("fwcluster_carp_adverts_sent_total", "counter", "CARP adverts sent")
    recv = Family("fwcluster_carp_adverts_received_total", "counter",
                  "Authentic CARP adverts received")
    drops = Family("fwcluster_carp_drops_total", "counter", "CARP packets dropped, by reason")
    interval = Family("fwcluster_carp_advert_interval_seconds", "gauge",
                      "Configured advert interval of this member: advbase + advskew/256")
    for v in status.get("vips", []):
        who = {"vhid": str(v["vhid"]), "interface": str(v["interface"])}
        for s in STATES:
            state.add(int(v["state"] == s), **who, address=str(v["address"]), state=s)
        master.add(int(v["state"] == "MASTER"), **who)
        trans.add(v["transitions"], **who)
        c = v.get("counters", {})
        sent.add(c.get("adverts_sent", 0), **who)
        recv.add(c.get("adverts_received", 0), **who)
        for reason, n in sorted(c.get("drops", {}).items()):
            drops.add(n, **who, reason=reason)
        interval.add(v["advbase"] + v["advskew"] / 256, **who)

    demotion = Family("fwcluster_carp_demotion", "gauge",
                      "Total demotion of this member (carried in its adverts)")
    demotion.add(status.get("demotion", 0))
    by_source = Family("fwcluster_carp_demotion_source", "gauge", "Demotion by source")
    sources = dict.fromkeys(STANDING_SOURCES, 0)
    sources.update({f"link:{i}": 0 for i in interfaces})
    sources.update(status.get("demotion_sources") or {})
    for name, value in sorted(sources.items()):
        by_source.add(value, source=name)
    maint = Family("fwcluster_carp_maintenance", "gauge", "1 while maintenance mode is on")
    maint.add(int(bool(status.get("maintenance"))))
    preempt = Family("fwcluster_carp_preempt", "gauge", "1 when preemption is on")
    preempt.add(int(bool(status.get("preempt"))))
    out = [info, state, master, trans, sent, recv, drops, interval, demotion, by_source,
           maint, preempt]
    if status.get("buckets"):
        out += bucket_families(status["buckets"])
    return out


def bucket_families(b: dict) -> list[Family]:
    """Active-active balancing: the buckets this member serves."""
    owned = set(b.get("owned", []))
    total = Family("fwcluster_carp_buckets", "gauge", "Hash buckets of active-active balancing")
    total.add(b.get("count", 0))
    mine = Family("fwcluster_carp_buckets_owned", "gauge", "Buckets this member serves")
    mine.add(len(owned))
    per = Family("fwcluster_carp_bucket_owned", "gauge", "1 while this member serves the bucket")
    for row in b.get("per_bucket", []):
        per.add(int(row["bucket"] in owned), bucket=str(row["bucket"]))
    applied = Family("fwcluster_carp_buckets_applied", "gauge",
                     "1 when the nftables set matches the owned buckets")
    applied.add(int(b.get("applied") is not None and set(b["applied"]) == owned))
    return [total, mine, per, applied]
