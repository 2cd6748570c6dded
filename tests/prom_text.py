"""Prometheus text in the metrics tests (unit and lab): parsed by
prometheus_client's parser, a real scraper's reading of what the daemons
render, and indexed by sample name and labels.

    got = samples(text)
    got[key("fwcluster_carp_master", vhid="1", interface="lan0")] == 1

prometheus_client is a test dependency (python3-prometheus-client, installed
by `make deps`): without it the importing tests fail, they are not skipped.
"""
from __future__ import annotations

from prometheus_client import parser


def samples(text: str) -> dict:
    """{(sample name, frozenset of its labels): value} of a Prometheus text."""
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def key(name: str, **labels: str) -> tuple:
    """The samples() key of one series."""
    return (name, frozenset(labels.items()))


def between(value: float, a: float, b: float) -> bool:
    """value lies between two readings (a counter scraped between two status
    calls; either order, for gauges that may fall)."""
    return min(a, b) <= value <= max(a, b)


def read_textfile(path) -> dict:
    """samples() of a node-exporter textfile; {} while there is none (the
    daemons replace it atomically, so it is never half written)."""
    try:
        with open(path) as f:
            return samples(f.read())
    except FileNotFoundError:
        return {}


def scrape(lab, member: str, listen: str) -> dict:
    """samples() of GET http://{listen}/metrics, from inside member's
    namespace (where the endpoint's localhost is)."""
    from tests.labkit import PY
    code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://{listen}/metrics', timeout=5).read().decode())")
    return samples(lab.run(member, [PY, "-c", code], timeout=15).stdout)


def scrape_between(lab, member: str, listen: str, command: str) -> tuple[dict, dict, dict]:
    """(scraped samples, `fwctl COMMAND --json` just before, just after): a
    settled value equals both statuses, a counter lies between them."""
    before = lab.fwctl(member, command)
    got = scrape(lab, member, listen)
    return got, before, lab.fwctl(member, command)


def listening(lab, member: str, *ports: int) -> list[str]:
    """Sorted local addresses (host:port) of TCP listeners on these ports in
    member's namespace."""
    query = " or ".join(f"sport = :{p}" for p in ports)
    lines = lab.run(member, ["ss", "-Hltn", query]).stdout.splitlines()
    return sorted(line.split()[3] for line in lines)


def metrics_config(lab, listen: str) -> dict:
    """[metrics] for lab.write_config(metrics=...): endpoints from listen,
    each member's textfiles where textfile_path() says."""
    return {"listen": listen, "textfile_dir": str(lab.dir / "prom" / "{node}")}


def textfile_path(lab, member: str, daemon: str):
    """Where member's daemon writes its textfile under metrics_config()."""
    return lab.dir / "prom" / member / f"{daemon}.prom"
