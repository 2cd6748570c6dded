"""fwctl drill: a failover rehearsal on a healthy cluster, measured.

Run on the master. It puts this member into maintenance (carpd demotes it,
a peer takes every vip), waits --hold seconds, lifts maintenance and waits
for the vips to come back (preemption). Times come from carpd's role events
(the `subscribe` stream): takeover = maintenance on -> the last vip here
turned BACKUP (carpd only does so on hearing a better master: the peer has
the vip); failback = maintenance off -> the last vip here MASTER again.

Sessions come from syncd when it answers: the tracked table size before and
after, and per peer what had not arrived at takeover (messages not yet
acknowledged, messages given up as lost). Without syncd they are unknown.

Why on the master: a backup hears nothing from other backups (CARP backups
are silent) and has no way to steer the master's carpd; the master has both
the vips and the maintenance switch. Refuses (exit 1) on a degraded cluster;
whatever happens after maintenance went on, it is lifted again on the way out.
"""
from __future__ import annotations

import json
import signal
import socket
import sys
import time

from fwcluster import ctlsock
from fwcluster.args import load_from_args
from fwcluster.fwctl import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, Unreachable, ask, emit


def register(sub) -> None:
    p = sub.add_parser("drill", help="failover rehearsal: vips to a peer and back, timed "
                       "(run it on the master)")
    p.add_argument("--timeout", type=float, default=15.0, metavar="S",
                   help="longest wait for takeover and for failback, each (default 15)")
    p.add_argument("--hold", type=float, default=1.0, metavar="S",
                   help="how long the peer keeps the vips before failback (default 1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


# --- pure checks and summaries ------------------------------------------------
def preflight(carp: dict, sync: dict | None) -> list[str]:
    """Why the drill must not run now (empty: go)."""
    problems = []
    vips = carp.get("vips", [])
    if not vips:
        problems.append("no vips configured")
    if carp.get("maintenance"):
        problems.append("maintenance is already on here")
    if carp.get("demotion"):
        sources = ", ".join(f"{k}={v}" for k, v in sorted((carp.get("demotion_sources") or {}).items()))
        problems.append(f"this member is demoted ({carp['demotion']}: {sources or 'unknown source'})")
    if not carp.get("preempt"):
        problems.append("preemption is off (carp.preempt = false): the vips would not come back")
    by_state: dict[str, list[str]] = {}
    for v in vips:
        by_state.setdefault(v["state"], []).append(str(v["vhid"]))
    if "INIT" in by_state:
        problems.append(f"vhid {', '.join(by_state['INIT'])} in INIT (vip interface down?)")
    if "BACKUP" in by_state and "MASTER" not in by_state and "INIT" not in by_state:
        masters = sorted({v["master"] for v in vips if v.get("master")})
        problems.append("this member is backup: run the drill on the master"
                        + (f" ({', '.join(masters)})" if masters else " (none heard yet)"))
    elif "BACKUP" in by_state and "MASTER" in by_state:
        problems.append(f"the vips are split between members (master here: vhid "
                        f"{', '.join(by_state['MASTER'])}; backup here: vhid {', '.join(by_state['BACKUP'])})")
    if sync is not None:
        if not sync.get("peers"):
            problems.append("syncd knows no peers")
        for name, p in sorted((sync.get("peers") or {}).items()):
            if p.get("state") != "up":
                seen = p.get("last_seen")
                problems.append(f"peer {name} is not reachable (syncd: {p.get('state')}, last seen "
                                + ("never" if seen is None else f"{seen:.1f} s ago") + ")")
        if not sync.get("in_sync"):
            problems.append("syncd is not in sync with its peers")
    return problems


def sessions_report(before: dict | None, at_takeover: dict | None, after: dict | None) -> dict:
    """Table sizes and what had not arrived on the peers, from three syncd
    status replies (None: syncd did not answer)."""
    if before is None:
        return {"known": False, "before": None, "after": None, "peers": {}, "not_arrived": None}
    peers = {}
    total = 0
    for name, p in sorted((before.get("peers") or {}).items()):
        t = ((at_takeover or {}).get("peers") or {}).get(name, {})
        a = ((after or {}).get("peers") or {}).get(name, {})
        # Entries if syncd counts them per message, else messages.
        unacked = t.get("unacked_entries", t.get("unacked"))
        lost = None if not a else a.get("msgs_lost", 0) - p.get("msgs_lost", 0)
        peers[name] = {"table_before": p.get("table_size"), "table_at_takeover": t.get("table_size"),
                       "table_after": a.get("table_size"),
                       "unacked_at_takeover": unacked, "lost_messages": lost,
                       "unacked_unit": "entries" if "unacked_entries" in t else "messages"}
        total += (unacked or 0) + (lost or 0)
    return {"known": True, "before": before.get("local_entries"),
            "after": None if after is None else after.get("local_entries"),
            "peers": peers, "not_arrived": total}


# --- carpd's role stream ------------------------------------------------------------
class RoleWatch:
    """carpd's subscribe stream: the current role of every vhid and when it
    last changed (carpd's wall clock)."""

    def __init__(self, path: str, vhids: list[int], timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
            self.sock.sendall(json.dumps({"cmd": "subscribe"}).encode() + b"\n")
        except OSError as e:
            self.sock.close()
            raise Unreachable(f"carpd is not running or not answering: {path}: {e}") from None
        self.buf = b""
        self.vhids = set(vhids)  # the vips' (not balancing buckets')
        self.state: dict[int, str] = {}
        self.since: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        while not set(vhids) <= set(self.state):  # the snapshot lines
            if not self._read(deadline):
                raise Unreachable(f"carpd: no role snapshot on {path}")

    def close(self) -> None:
        self.sock.close()

    def _read(self, deadline: float) -> bool:
        """Take in one event; False on timeout or a closed stream."""
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, OSError):
                return False
            if not chunk:
                return False
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            ev = json.loads(line)
        except ValueError:
            return True
        if isinstance(ev, dict) and ev.get("event") == "role" and ev.get("vhid") in self.vhids:
            vhid = ev.get("vhid")
            if self.state.get(vhid) != ev.get("state"):
                self.since[vhid] = float(ev.get("time", time.time()))
            self.state[vhid] = ev.get("state")
        return True

    def until(self, want: str, deadline: float) -> dict[int, float] | None:
        """Wait until every vhid is in state want; {vhid: time it got there}."""
        while any(s != want for s in self.state.values()):
            if not self._read(deadline):
                return None
        return {vhid: self.since[vhid] for vhid in self.state}


# --- the drill -------------------------------------------------------------------------
def _syncd(cfg, msg: dict) -> dict | None:
    try:
        return ask(cfg, "syncd", msg, timeout=2.0)
    except ctlsock.ControlError:
        return None


def _sync_status(cfg) -> dict | None:
    """syncd's status, its local_entries replaced by an exact count of the
    table now (syncd's own figure is refreshed once a second)."""
    st = _syncd(cfg, {"cmd": "status"})
    if st is not None:
        count = _syncd(cfg, {"cmd": "conntrack", "entries": False})
        if count is not None and isinstance(count.get("total"), int):
            st["local_entries"] = count["total"]
    return st


def _maintenance(cfg, on: bool) -> None:
    ask(cfg, "carpd", {"cmd": "maintenance", "on": on})


def _timed(watch: RoleWatch, want: str, since: float, timeout: float, report: dict,
           field: str, failure: str) -> bool:
    """Wait until every vip here is in state `want`; put each one's seconds
    from `since` (and the slowest) into report[field]. False, with the
    failure noted, when that did not happen within timeout."""
    got = watch.until(want, time.monotonic() + timeout)
    if got is None:
        report["result"] = "failed"
        report["problems"].append(failure)
        return False
    by_vhid = {v["vhid"]: v for v in report["vips"]}
    for vhid, t in got.items():
        by_vhid[vhid][field] = round(max(0.0, t - since), 4)
    report[field] = max(v[field] for v in report["vips"])
    return True


class _Stopped(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Stopped()


def drill(cfg, timeout: float, hold: float) -> dict:
    """Carry out the drill; the report (see docs/fwctl.md). Raises
    fwctl.DaemonError when carpd cannot be reached or refuses."""
    carp_path = ctlsock.socket_path(cfg.run_dir, "carpd")
    carp = ask(cfg, "carpd", {"cmd": "status"})
    sync_before = _sync_status(cfg)
    report = {"node": carp.get("node"), "cluster": carp.get("cluster"), "result": "refused",
              "problems": preflight(carp, sync_before), "notes": [],
              "timeout": timeout, "hold": hold, "takeover_seconds": None, "failback_seconds": None,
              "vips": [{"vhid": v["vhid"], "interface": v["interface"], "address": v["address"],
                        "taken_over_by": None, "takeover_seconds": None, "failback_seconds": None}
                       for v in carp.get("vips", [])],
              "sessions": sessions_report(None, None, None)}
    if sync_before is None:
        report["notes"].append("syncd is not running: sessions unknown, peers not verified "
                               "beforehand (the takeover itself shows one is there)")
    if report["problems"]:
        return report
    by_vhid = {v["vhid"]: v for v in report["vips"]}
    watch = RoleWatch(carp_path, list(by_vhid))
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    maintenance_on = False
    sync_takeover = None
    try:
        t0 = time.time()
        # Lifted on the way out from here on, even if this request fails:
        # carpd may have taken it before the answer was lost.
        maintenance_on = True
        _maintenance(cfg, True)
        if not _timed(watch, "BACKUP", t0, timeout, report, "takeover_seconds",
                      f"no member took over within {timeout:g} s (is a peer running?); "
                      "maintenance lifted, the vips stay here"):
            return report
        sync_takeover = _sync_status(cfg)
        time.sleep(max(0.0, hold))
        # Who holds the vips, asked at the end of the hold: with several
        # backups all of them claim at first, and the best one wins a few
        # adverts later.
        during = ask(cfg, "carpd", {"cmd": "status"})
        for v in during.get("vips", []):
            if v["vhid"] in by_vhid:
                by_vhid[v["vhid"]]["taken_over_by"] = v.get("master")
        t1 = time.time()
        _maintenance(cfg, False)
        maintenance_on = False
        _timed(watch, "MASTER", t1, timeout, report, "failback_seconds",
               f"the vips did not come back within {timeout:g} s "
               "(maintenance is off again; see fwctl status)")
    except _Stopped:
        report["result"] = "failed"
        report["problems"].append("interrupted (SIGTERM); maintenance lifted")
    except KeyboardInterrupt:
        report["result"] = "failed"
        report["problems"].append("interrupted; maintenance lifted")
    finally:
        if maintenance_on:
            try:
                _maintenance(cfg, False)
            except ctlsock.ControlError as e:
                report["problems"].append(f"could not lift maintenance: {e} "
                                          "-- run `fwctl maintenance off`")
        signal.signal(signal.SIGTERM, old)
        watch.close()
    sync_after = None if sync_before is None else _sync_status(cfg)
    report["sessions"] = sessions_report(sync_before, sync_takeover, sync_after)
    if report["result"] != "failed":
        lost = report["sessions"]["not_arrived"]
        if lost:
            report["problems"].append(f"{lost} sync messages/entries had not arrived on the peers "
                                      "at takeover")
        report["result"] = "failed" if report["problems"] else "ok"
    return report


def run(args) -> int:
    cfg, _node, _ = load_from_args(args)
    if args.timeout <= 0 or args.hold < 0:
        print("error: --timeout must be > 0 and --hold >= 0", file=sys.stderr)
        return EXIT_USAGE
    report = drill(cfg, args.timeout, args.hold)  # fwctl.main reports a DaemonError
    emit(args, report, human)
    return EXIT_OK if report["result"] == "ok" else EXIT_PROBLEM


# --- human output ----------------------------------------------------------------------------
def _secs(v) -> str:
    return "-" if v is None else f"{v:.3f} s"


def human(r: dict) -> None:
    if r["result"] == "refused":
        print(f"drill refused on {r['node']} (cluster {r['cluster']}):")
        for p in r["problems"]:
            print(f"  - {p}")
        for n in r["notes"]:
            print(f"  note: {n}")
        return
    print(f"drill on {r['node']} (cluster {r['cluster']}): {r['result'].upper()}")
    print(f"  takeover  {_secs(r['takeover_seconds'])}   (maintenance on -> every vip held by a peer)")
    print(f"  failback  {_secs(r['failback_seconds'])}   (maintenance off -> every vip back here; "
          f"hold {r['hold']:g} s)")
    head = ("VHID", "INTERFACE", "ADDRESS", "TAKEN OVER BY", "TAKEOVER", "FAILBACK")
    rows = [head] + [(str(v["vhid"]), v["interface"], v["address"], v["taken_over_by"] or "-",
                      _secs(v["takeover_seconds"]), _secs(v["failback_seconds"])) for v in r["vips"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    s = r["sessions"]
    if not s["known"]:
        print("  sessions  unknown (syncd not running)")
    else:
        print(f"  sessions  {s['before']} tracked before, {s['after']} after (syncd)")
        for name, p in s["peers"].items():
            print(f"    peer {name}: table {p['table_before']} before, {p['table_at_takeover']} at "
                  f"takeover (as it reported); not arrived at takeover: {p['unacked_at_takeover']} "
                  f"{p['unacked_unit']} unacknowledged, {p['lost_messages']} messages lost")
        print(f"  not arrived on the peers: {s['not_arrived'] or 'none'}")
    for p in r["problems"]:
        print(f"  problem: {p}")
    for n in r["notes"]:
        print(f"  note: {n}")
