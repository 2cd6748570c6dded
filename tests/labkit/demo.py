"""`make demo`: two members with the real carpd and the shipped ruleset, a
client pinging its gateway (the LAN vip); kill the master, watch fw2 take
over, bring fw1 back and watch it preempt."""
from __future__ import annotations

import sys
import time

from tests.labkit.addresses import CLIENT4, LAN_VIP4
from tests.labkit.lab import Lab
from tests.labkit.prober import Prober


def demo(out=None, limit: float = 60.0) -> int:
    """Two members with the real carpd, a client pinging the LAN VIP (the
    gateway) every 50 ms; kill the master and show the failover live, then
    bring it back and show it preempt. Bounded by `limit` seconds."""
    out = out or sys.stdout
    t0 = time.monotonic()

    def say(msg: str) -> None:
        out.write(f"[{time.monotonic() - t0:6.2f}s] {msg}\n")
        out.flush()

    def until(pred, timeout) -> bool:
        return Lab.wait_for(pred, max(0.1, min(timeout, t0 + limit - time.monotonic())), 0.05)

    with Lab(members=2, prefix="fwdemo", ipv6=False) as lab:
        say(f"lab up in {lab.setup_seconds * 1000:.0f} ms: client {CLIENT4} -> gateway {LAN_VIP4} "
            f"(vhid 1) on fw1 ({lab.addr4('fw1')}) / fw2 ({lab.addr4('fw2')}), advbase 1, "
            f"advskew fw1 {lab.advskews['fw1']}, fw2 {lab.advskews['fw2']}")
        for m in lab.members:
            lab.start_carpd(m)
            say(f"carpd started on {m} (pid {lab.daemon(m).pid})")
        if not until(lambda: lab.states(1) == {"fw1": "MASTER", "fw2": "BACKUP"}, 15):
            say(f"election did not settle: {lab.states(1)}")
            return 1
        say(f"elected: {lab.states(1)}")

        misses = {"n": 0, "last": None}

        def on_reply(seq, sent, recv):
            last = misses["last"]
            if last is not None and recv - last > 0.2:
                say(f"ping: replies again after a {1000 * (recv - last):.0f} ms gap")
            misses["last"] = recv

        with Prober(lab, "client", LAN_VIP4, interval=0.05, duration=limit, on_reply=on_reply) as probe:
            until(lambda: len(probe.replies) >= 20, 3)
            say(f"ping: {len(probe.replies)} replies from the gateway so far")

            def watch(want: dict, timeout: float) -> bool:
                seen = None

                def changed():
                    nonlocal seen
                    now = lab.states(1)
                    if now != seen:
                        seen = now
                        say(f"state: {now}")
                    return now == want
                return until(changed, timeout)

            say("node loss of fw1: links down, SIGKILL carpd")
            t_loss = lab.node_loss("fw1")
            ok = watch({"fw1": None, "fw2": "MASTER"}, 10)
            until(lambda: probe.reply_times() and probe.reply_times()[-1] > t_loss, 5)
            gap = probe.gap_around(t_loss)
            say(f"fw2 took over; client lost the gateway for {gap * 1000:.0f} ms" if ok and gap
                else "fw2 did not take over")
            if not ok:
                return 1
            say("fw1 returns: links up, carpd restarted")
            lab.node_return("fw1")
            lab.start_carpd("fw1")
            ok = watch({"fw1": "MASTER", "fw2": "BACKUP"}, 15)
            until(lambda: False, 1.0)
            say("fw1 preempted back (lower advskew)" if ok else "fw1 did not preempt")
        say(f"ping: {len(probe.replies)} replies to {len(probe.replies) + len(probe.sent)} requests")
    say("lab torn down")
    return 0 if ok else 1
