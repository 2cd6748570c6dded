"""fwcluster_build_info, the one family carpd and syncd both expose (pure):
the release a daemon runs and the protocol versions it speaks, from the
"release" of its status (fwcluster/version.py), so members that cannot
work together show up in a query. The daemon label keeps the two daemons'
series apart in one node-exporter.
"""
from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily, Metric

from fwcluster.core import versions


def family(daemon: str, release: dict | None) -> Metric:
    release = release or {}
    got = release.get("protocols") or {}
    names = sorted(set(versions.protocols()) | set(got))  # the same labels whatever is reported
    info = GaugeMetricFamily("fwcluster_build_info", "Release this daemon runs and the protocol "
                             "versions it speaks (always 1)",
                             labels=("daemon", "version", *(f"{n}_protocol" for n in names)))
    info.add_metric([daemon, str(release.get("version") or versions.UNKNOWN),
                     *(str(got.get(n, versions.UNKNOWN)) for n in names)], 1)
    return info
