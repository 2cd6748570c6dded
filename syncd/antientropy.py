"""One anti-entropy round of the running daemon (the logic is the pure
core's: protocol.Sync.anti_entropy, digest.py): dump the kernel table, let
the core correct its own entries and send digests, and keep the cost.

Runs every [sync] digest_interval seconds (housekeeping) and on the control
request {"cmd": "anti-entropy"} (tests, operators after an incident).
"""
from __future__ import annotations

import logging
import time

from syncd.core.policy import syncable

log = logging.getLogger("syncd")
ROUND = "anti-entropy"


def run_round(daemon) -> dict:
    """Returns the round's figures (also kept in status as "anti_entropy")."""
    wall, cpu = time.monotonic(), time.process_time()
    sync = daemon.sync
    # An entry nobody speaks for is ours only while we carry traffic
    # (master of some vip, or no carpd to say otherwise).
    sync.carrying = not daemon.roles or "MASTER" in daemon.roles.values()
    try:
        entries = [e for e in daemon.ct.dump() if syncable(e, daemon.own)]
    except OSError as e:   # a dump interrupted (the table changed under it): next round
        log.warning("anti-entropy: dump failed: %s", e)
        return {"error": str(e)}
    dump_cpu = time.process_time() - cpu
    fixes = sync.anti_entropy(entries, daemon.now())
    daemon.process()
    figures = {"round": sync.round, "entries": len(entries), "own": len(sync.own),
               "corrections": fixes, "corrections_total": sync.corrections,
               "dump_cpu_s": round(dump_cpu, 4),
               "cpu_s": round(time.process_time() - cpu, 4),
               "wall_s": round(time.monotonic() - wall, 4)}
    daemon.anti_entropy = figures
    if fixes:
        log.warning("anti-entropy: %d own entries corrected from the kernel table "
                    "(lost conntrack events)", fixes)
    return figures
