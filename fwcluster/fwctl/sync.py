"""fwctl sync: state-sync health per peer (syncd's status).

Per peer: state, last seen, messages and entries sent/received/acked/resent/
lost, replay and auth drops, lag (age of the oldest unacknowledged message);
the local table size and each peer's as it reports it; the sync version in
use with each peer and the release it runs (as its ALIVE tells); while not
in sync, what it waits for from each peer (a peer this member cannot
understand: which version it speaks); the sync links: the one each peer's
stream uses and every link's state towards it (DEGRADED while a link is
down or silent: one more fault stops replication). Exit 1 while not in
sync or a peer is down, 3 when syncd does not answer.
"""
from __future__ import annotations

from fwcluster.args import load_from_args
from fwcluster.core import versions
from fwcluster.fwctl import EXIT_OK, EXIT_PROBLEM, ask, emit, status


def register(sub) -> None:
    p = sub.add_parser("sync", help="state-sync health of every peer (syncd)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def fetch(cfg) -> dict:
    return ask(cfg, "syncd", {"cmd": "status"})


def run(args) -> int:
    cfg, _node, _ = load_from_args(args)
    data = fetch(cfg)
    emit(args, data, human)
    healthy = data.get("in_sync") and all(p.get("state") == "up" for p in data.get("peers", {}).values())
    return EXIT_OK if healthy else EXIT_PROBLEM


def _ago(v) -> str:
    return "never" if v is None else f"{v:.1f}s ago"


def _version(p: dict) -> str:
    """The sync version in use; a version the peer sends that we do not speak."""
    if p.get("unintelligible") is not None:
        return f"{p['unintelligible']}?"
    return "-" if p.get("sync_version") is None else str(p["sync_version"])


def link_lines(d: dict) -> list[str]:
    """The sync links: overall, then per peer the link in use and each
    link's state ("up", "silent", "no carrier")."""
    links = d.get("links") or {}
    if not links:
        return []
    down = [name for name, link in links.items() if not link.get("up")]
    out = [f"sync links: {', '.join(links)}" + (f"  DEGRADED: {', '.join(down)} not up" if down else "")]
    for name, p in sorted(d.get("peers", {}).items()):
        states = ", ".join(f"{i} {s}" for i, s in (p.get("links") or {}).items())
        out.append(f"  {name} via {p.get('link')} ({states}; {p.get('link_switches', 0)} switches)")
    return out


def human(d: dict) -> None:
    drops = ", ".join(f"{k}={v}" for k, v in sorted(d.get("drops", {}).items())) or "none"
    print(f"node {d.get('node')}  epoch {d.get('epoch')}  in sync: {'yes' if d.get('in_sync') else 'NO'}  "
          f"local entries {d.get('local_entries')}  carpd {'linked' if d.get('carpd') else 'not linked'}"
          f"  demotion {d.get('demotion')}")
    status.waiting(d)
    print(f"drops: {drops}")
    if d.get("sync_versions"):
        print(f"sync versions spoken: {versions.span(d['sync_versions'])}")
    head = ("PEER", "STATE", "RESYNC", "LAST SEEN", "ENTRIES", "MSGS TX/RX", "ENTRIES TX/RX",
            "ACKED", "RESENT", "LOST", "REPLAY", "AUTH", "UNACKED", "LAG", "SYNC V", "RELEASE")
    rows = [head]
    for name, p in sorted(d.get("peers", {}).items()):
        rows.append((name, p["state"], p["resync"], _ago(p.get("last_seen")),
                     "-" if p.get("table_size") is None else str(p["table_size"]),
                     f"{p['msgs_sent']}/{p['msgs_received']}",
                     f"{p['entries_sent']}/{p['entries_received']}",
                     str(p["msgs_acked"]), str(p["msgs_resent"]), str(p["msgs_lost"]),
                     str(p["replay"]), str(p["auth"]), str(p["unacked"]), f"{p['lag'] * 1000:.0f}ms",
                     _version(p), p.get("version") or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    for line in link_lines(d):
        print(line)
    k = d.get("kernel", {})
    print(f"kernel: created {k.get('created', 0)} updated {k.get('updated', 0)} "
          f"deleted {k.get('deleted', 0)} failed {k.get('failed', 0)}"
          + (f" (last: {d['last_error']})" if d.get("last_error") else ""))
