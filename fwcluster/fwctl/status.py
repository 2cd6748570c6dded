"""fwctl status: each vip's CARP role, master, timing, demotion and counters,
each track's state, and the release of this member and its peers.

--json prints carpd's status object (without "ok"), plus "sync" when syncd
answers and "versions" (fwcluster.core.versions.members: this member's
release as carpd reports it, each sync peer's and whether it is compatible). Exit 3 when carpd
is not reachable.
"""
from __future__ import annotations

from fwcluster import ctlsock, dhcpsvc, version
from fwcluster.args import load_from_args
from fwcluster.carp.core import hardened
from fwcluster.core import versions
from fwcluster.fwctl import EXIT_OK, ask, emit
from fwcluster.fwctl.dhcp import line as dhcp_line


def register(sub) -> None:
    p = sub.add_parser("status", help="CARP role of every vip, demotion and counters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def fetch(cfg) -> dict:
    """carpd's status (raises fwctl.DaemonError), with syncd's if it answers."""
    data = ask(cfg, "carpd", {"cmd": "status"})
    try:
        data["sync"] = ask(cfg, "syncd", {"cmd": "status"}, timeout=2.0)
    except ctlsock.ControlError:
        pass  # syncd is optional here
    if cfg.dhcp:
        data["dhcp"] = dhcpsvc.status(cfg, data.get("node") or "")
    # carpd reports the release it runs; one from before that, fwctl's own
    data["versions"] = versions.members(data.get("node") or "", data.get("release") or version.release(),
                                        data.get("sync"))
    return data


def run(args) -> int:
    cfg, _node, _ = load_from_args(args)
    emit(args, fetch(cfg), human)
    return EXIT_OK


def _drops(counters: dict) -> str:
    drops = {k: v for k, v in counters.get("drops", {}).items() if v}
    return ",".join(f"{k}={v}" for k, v in sorted(drops.items())) or "-"


def human(d: dict) -> None:
    sources = d.get("demotion_sources") or {}
    src = " (" + ", ".join(f"{k}={v}" for k, v in sorted(sources.items())) + ")" if sources else ""
    print(f"node {d.get('node')}  cluster {d.get('cluster')}  demotion {d.get('demotion')}{src}  "
          f"maintenance {'on' if d.get('maintenance') else 'off'}  "
          f"preempt {'on' if d.get('preempt') else 'off'}"
          + (f"  carp {d['mode']}" if d.get("mode") else "")
          + (f"  balance {d['balance']}" if d.get("balance") else ""))
    head = ("VHID", "INTERFACE", "ADDRESS", "STATE", "MASTER", "ADVBASE", "ADVSKEW",
            "TRANS", "SENT", "RECV", "DROPS")
    rows = [head]
    for v in d.get("vips", []):
        c = v.get("counters", {})
        rows.append((str(v.get("vhid")), v.get("interface", ""), v.get("address", ""),
                     v.get("state", ""), v.get("master") or "-", str(v.get("advbase")),
                     str(v.get("advskew")), str(v.get("transitions")),
                     str(c.get("adverts_sent", 0)), str(c.get("adverts_received", 0)), _drops(c)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    hardened_versions(d.get("vips", []), d.get("hardened_told") or {})
    if d.get("tracks"):
        tracks(d["tracks"])
    if "buckets" in d:
        buckets(d["buckets"], d.get("vips", []))
    if "sync" in d:
        s = d["sync"]
        brief = ", ".join(f"{k}={v}" for k, v in sorted(s.items())
                          if isinstance(v, (str, int, float, bool)))
        print(f"sync: {brief or 'running'}")
        from fwcluster.fwctl.sync import link_lines     # sync imports this module
        for line in link_lines(s)[:1]:     # the overall line; fwctl sync has the rest
            print(line)
        waiting(s)
        conf = s.get("config")
        if isinstance(conf, dict):
            state = ("STALE: newer config on " + ", ".join(conf["newer_on"])) if conf.get("stale") \
                else "current"
            behind = f"; behind us: {', '.join(conf['peers_behind'])}" if conf.get("peers_behind") else ""
            print(f"config: generation {conf.get('generation')} {state}{behind}")
    if "dhcp" in d:
        print(dhcp_line(d["dhcp"]))
    if "versions" in d:
        release(d["versions"])


def hardened_versions(vips: list, told: dict | None = None) -> None:
    """Which hardened CARP version each vhid's adverts go out at and, below
    the newest, the senders heard at it and the members syncd says speak
    no newer (docs/carp.md "Hardened versions")."""
    by_version: dict[int, list[dict]] = {}
    for v in vips:
        if v.get("hardened_version") is not None:
            by_version.setdefault(v["hardened_version"], []).append(v)
    parts = []
    for ver, group in sorted(by_version.items(), reverse=True):
        older = sorted({addr for v in group for addr, pv in (v.get("hardened_peers") or {}).items()
                        if pv == ver}) if ver < hardened.VERSION else []
        older += sorted(f"{name} (its sync link says)" for name, pv in (told or {}).items()
                        if pv == ver and ver < hardened.VERSION)
        parts.append(f"version {ver} on vhid {','.join(str(v.get('vhid')) for v in group)}"
                     + (f" (heard at {ver}: {', '.join(older)})" if older else ""))
    if parts:
        print("hardened carp: " + "; ".join(parts))


def release(r: dict) -> None:
    """This member's version and protocols; each peer's, and whether the
    two can work together (docs/upgrade.md)."""
    protos = ", ".join(f"{k} {v}" for k, v in r["protocols"].items())
    print(f"release: {r['version']} (protocols {protos})")
    for name, p in r["peers"].items():
        print(f"  peer {name}: {p['version']}, {p['compatible']}: {p['detail']}")


def tracks(rows: list) -> None:
    """Each [[track]]: its state, the weight it demotes by while failed, and
    its last check (docs/tracking.md)."""
    table = [("TRACK", "CHECK", "STATE", "WEIGHT", "LAST", "AGO", "CHANGES/MIN")]
    for t in rows:
        last = "-" if t.get("last_ok") is None else ("ok" if t["last_ok"] else "fail")
        detail = f"{last}: {t['last_detail']}" if t.get("last_detail") else last
        age = "-" if t.get("last_age") is None else f"{t['last_age']:.1f}s"
        table.append((str(t.get("name")), str(t.get("check")), str(t.get("state")),
                      str(t.get("weight")), detail, age, str(t.get("changes_last_minute", 0))))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def waiting(s: dict) -> None:
    """Why syncd is not in sync yet, per peer (while it is, carpd keeps this
    member demoted unless it carries traffic)."""
    for peer, why in sorted((s.get("waiting") or {}).items()):
        print(f"waiting for {peer}: {why}")


def _ranges(numbers) -> str:
    """1,2,3,5 -> "1-3,5": bucket lists stay short."""
    out, run = [], []
    for n in sorted(numbers):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
        run = [n]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
    return ",".join(out) or "none"


def buckets(b: dict, vips: list) -> None:
    """Active-active: what this member owns, and who owns what as far as
    its bucket elections know (the master of each bucket's vhid)."""
    owned = b.get("owned", [])
    count = b.get("count", 0)
    applied = b.get("applied")
    note = ("" if applied == owned else
            f"  (nft set: {b.get('error') or 'not updated yet'})")
    print(f"buckets: {len(owned)} of {count} owned here: {_ranges(owned)}{note}")
    per = b.get("per_bucket", [])
    mine = {r["bucket"] for r in per if r.get("state") == "MASTER"}
    by_master: dict = {}
    unknown = []
    for r in per:
        if r.get("master"):
            by_master.setdefault(r["master"], []).append(r["bucket"])
        else:
            unknown.append(r["bucket"])
    rows = [("OWNER", "BUCKETS", "COUNT")]
    for master, bs in sorted(by_master.items(), key=lambda kv: -len(kv[1])):
        label = master + (" (this member)" if set(bs) <= mine and bs else "")
        rows.append((label, _ranges(bs), str(len(bs))))
    if unknown:
        rows.append(("unknown", _ranges(unknown), str(len(unknown))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
