"""Tracks and role hooks with the real carpd and syncd in the namespace lab.

1. The master's upstream gateway (the server, 198.51.100.100) stops
   answering its echoes (an nft drop in the server's namespace, for the
   master's own WAN address only): the master's icmp track fails after
   fall x interval + timeout, and its demotion goes out in an advert at once
   (machine: a demoted master tells its peers), on which the backup claims:
   the vips move within that detection time plus a margin (well inside the
   issue's fall x interval + master-down). The sessions through it carry on
   (state sync). When the gateway answers again fw1 rises after rise x
   interval + timeout and preempts on fw2's next advert.
2. A role hook starts a small process on the master and stops it on the
   member that stops being master, seen from the test through pid files.
"""
from __future__ import annotations

import os
import signal
import time

from carp_helpers import vhids, wait_settled
from sync_helpers import TIMING, Load, in_sync, logs, start_member, start_server
from tests.labkit import Lab, SERVER4
from fwcluster.carp.core import machine

MARGIN = 0.3  # the loaded machine: loop turns, the advert on the wire, netlink
GW = {"name": "gw", "type": "icmp", "target": SERVER4, "interval": 0.2, "timeout": 0.15,
      "rise": 2, "fall": 3, "weight": 240}
SESSIONS = 50
SETTLE = 0.3


def all_master(lab: Lab, member: str) -> bool:
    return all(lab.vip_state(member, v) == "MASTER" for v in vhids(lab))


def silence_gateway_for(lab: Lab, member: str) -> None:
    """The server stops answering member's echoes (only member's: the
    backup still reaches it, as when the master's own uplink path breaks)."""
    src = lab.addr4(member, "wan")
    rules = ("table inet fwtrack {\n chain in {\n  type filter hook input priority 0;\n"
             f"  ip saddr {src} icmp type echo-request drop\n }}\n}}\n")
    lab.run("server", ["nft", "-f", "-"], input=rules)


def answer_again(lab: Lab) -> None:
    lab.run("server", ["nft", "delete", "table", "inet", "fwtrack"])


def track_of(lab: Lab, member: str, name: str) -> dict:
    return next(t for t in lab.status(member)["tracks"] if t["name"] == name)


def test_master_whose_gateway_stops_answering_hands_over_and_comes_back():
    with Lab(members=2, ipv6=False, prefix="trk", tracks=[GW], **TIMING) as lab:
        start_server(lab)
        for m in lab.members:
            start_member(lab, m)
        assert lab.wait_for(lambda: all_master(lab, "fw1") and in_sync(lab), 25), logs(lab)
        wait_settled(lab, "fw1")
        assert track_of(lab, "fw1", "gw")["state"] == "ok"
        tcp = Load(lab, "tcp", SESSIONS, duration=60)
        t0 = time.time()
        assert tcp.wait_alive_since(t0 + 1, 20) == SESSIONS
        time.sleep(1)  # the sessions replicated to fw2

        bound = GW["interval"] * GW["fall"] + GW["timeout"] + MARGIN
        t_cut = time.monotonic()
        tf = time.time()
        silence_gateway_for(lab, "fw1")
        assert lab.wait_for(lambda: all_master(lab, "fw2") and not all_master(lab, "fw1"),
                            bound + 2), logs(lab)
        took = time.monotonic() - t_cut
        print(f"\ntrack failover: {took:.3f} s (bound {bound:.3f} s)")
        assert took <= bound, f"handover took {took:.3f} s, bound {bound:.3f} s"
        wait_settled(lab, "fw2")
        t = track_of(lab, "fw1", "gw")
        assert t["state"] == "failed" and t["last_ok"] is False and t["demotion"] == 240
        assert lab.status("fw1")["demotion_sources"].get("track:gw") == 240
        assert track_of(lab, "fw2", "gw")["state"] == "ok"
        alive = tcp.wait_alive_since(tf + took + SETTLE, 20)
        assert alive == SESSIONS, f"{alive}/{SESSIONS} sessions after the handover\n{logs(lab)}"
        text = lab.fwctl_raw("fw1", "status").stdout
        assert "gw" in text and "failed" in text, text

        # The gateway answers again: fw1 rises and preempts.
        fw2_advert = machine.advert_interval(1, lab.advskews["fw2"])
        back_bound = GW["interval"] * GW["rise"] + GW["timeout"] + fw2_advert + MARGIN
        t_back = time.monotonic()
        tb = time.time()
        answer_again(lab)
        assert lab.wait_for(lambda: all_master(lab, "fw1"), back_bound + 2), logs(lab)
        back = time.monotonic() - t_back
        print(f"track return: {back:.3f} s (bound {back_bound:.3f} s)")
        assert back <= back_bound
        wait_settled(lab, "fw1")
        assert "track:gw" not in lab.status("fw1")["demotion_sources"]
        alive = tcp.wait_alive_since(tb + back + SETTLE, 20)
        assert alive == SESSIONS, f"{alive}/{SESSIONS} sessions after the return\n{logs(lab)}"
        tcp.stop()


HOOK = """#!/bin/sh
# Lab role hook: on MASTER start a bounded sleep and write its pid file,
# otherwise stop it. Which member runs it comes from the JSON on stdin.
node=$(sed -n 's/.*"node": "\\([^"]*\\)".*/\\1/p')
pidfile="{dir}/svc-$node.pid"
echo "$node: $2 -> $3 ($4)" >> "{dir}/calls"
case "$3" in
MASTER)
    setsid sleep 120 </dev/null >/dev/null 2>&1 &
    echo $! > "$pidfile"
    echo "started $(cat "$pidfile")" ;;
*)
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null; rm -f "$pidfile"; echo stopped; fi ;;
esac
"""


def _pid(lab: Lab, member: str) -> int | None:
    try:
        pid = int((lab.dir / "hooks" / f"svc-{member}.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def test_a_role_hook_starts_and_stops_a_service_on_the_master():
    with Lab(members=2, ipv6=False, prefix="hk", advbase=0,
             advskews={"fw1": 50, "fw2": 200}) as lab:
        d = lab.dir / "hooks"
        d.mkdir()
        role_d = d / "role.d"
        role_d.mkdir()
        hook = role_d / "50-service"
        hook.write_text(HOOK.format(dir=d))
        hook.chmod(0o755)
        lab.write_config(hooks={"directory": str(role_d), "timeout": 5})
        started = []
        try:
            for m in lab.members:
                lab.start_carpd(m)
            wait_settled(lab, "fw1")
            assert lab.wait_for(lambda: _pid(lab, "fw1") is not None, 3), (d / "calls").read_text()
            started.append(_pid(lab, "fw1"))
            assert _pid(lab, "fw2") is None
            assert lab.status("fw1")["group_role"] == "MASTER"

            lab.fwctl("fw1", "maintenance", "on")
            wait_settled(lab, "fw2")
            assert lab.wait_for(lambda: _pid(lab, "fw2") is not None and _pid(lab, "fw1") is None, 3), \
                (d / "calls").read_text()
            started.append(_pid(lab, "fw2"))
            lab.fwctl("fw1", "maintenance", "off")
            wait_settled(lab, "fw1")
            assert lab.wait_for(lambda: _pid(lab, "fw1") is not None and _pid(lab, "fw2") is None, 3)
            started.append(_pid(lab, "fw1"))
            calls = (d / "calls").read_text().splitlines()
            # Once per group transition (two vhids move), not once per vhid.
            assert sum("-> MASTER" in c for c in calls) == 3, calls
            assert "hook 50-service: started" in lab.log_tail("fw1", "carpd", 20000)
            assert lab.status("fw1")["hooks"]["failures"] == 0
        finally:
            for m in lab.members:
                pid = _pid(lab, m)
                if pid:
                    started.append(pid)
            for pid in set(p for p in started if p):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
