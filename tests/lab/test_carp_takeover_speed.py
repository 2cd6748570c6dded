"""How long a member takes to put all its vips in place once it decides to
become MASTER (4 vips: IPv4 and IPv6 on LAN and WAN).

Not a timed assertion: the figures are printed (run with -s to see them);
the test asserts that every handover completes and that the figures could
be measured. Rounds alternate: fw1 demoted (maintenance on: its adverts
for all vhids go out together, fw2 takes all at once) and fw1 preempting
back (maintenance off: it takes each vhid on fw2's next advert for it). Decision time: the taker's "-> MASTER" log line; vip present:
`ip -ts monitor address` in the taker's namespace.
"""
from __future__ import annotations

import re
import statistics
import subprocess
from datetime import datetime

from carp_helpers import vip_address, vhids, wait_settled

ROUNDS = 3  # each round: hand over to fw2 and back to fw1
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*-> MASTER")
MON_LINE = re.compile(r"^\[(\S+)\] \d+: (\S+)\s+inet6? ([0-9a-f.:]+)/")


def _log_times(text: str) -> list[float]:
    return [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for line in text.splitlines() if (m := LOG_TIME.match(line))]


def _added(text: str, vips: set[tuple[str, str]]) -> list[tuple[float, str]]:
    out = []
    for line in text.splitlines():
        m = MON_LINE.match(line)
        if m and (m.group(2), m.group(3)) in vips:
            out.append((datetime.fromisoformat(m.group(1)).timestamp(), m.group(3)))
    return out


def _handover_ms(log: str, mon: str, vips: set) -> tuple[float, float]:
    """(first MASTER decision, last MASTER decision) -> last vip add, in ms.
    The decisions are apart when they follow the old master's adverts, which
    arrive per vhid (preemption); a demoted master's come together."""
    decided = _log_times(log)
    assert decided, f"no MASTER decision in the log:\n{log[-1500:]}"
    first, last = min(decided), max(decided)
    adds = [t for t, _ in _added(mon, vips) if t >= first - 0.002]
    assert len(adds) >= len(vips), f"vips added: {adds}\n{mon[-1500:]}"
    return (max(adds) - first) * 1000, max(0.0, max(adds) - last) * 1000


def test_takeover_adds_all_vips_together(carp_lab, tmp_path):
    lab = carp_lab(members=2, ipv6=True)
    vips = {vip_address(lab, v) for v in vhids(lab)}
    assert len(vips) == 4
    mons = {m: tmp_path / f"{m}-addr.log" for m in lab.members}
    for m, path in mons.items():
        with open(path, "wb") as out:
            lab.popen(m, ["ip", "-ts", "monitor", "address"], stdout=out,
                      stderr=subprocess.DEVNULL)
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1", timeout=20)
    figures = []
    for _ in range(ROUNDS):
        for taker, on in (("fw2", True), ("fw1", False)):
            log_mark = len(lab.log_tail(taker, "carpd", 10**9))
            mon_mark = mons[taker].stat().st_size
            lab.control("fw1", {"cmd": "maintenance", "on": on})
            wait_settled(lab, taker, timeout=20)
            log = lab.log_tail(taker, "carpd", 10**9)[log_mark:]
            mon = mons[taker].read_text()[mon_mark:]
            figures.append(_handover_ms(log, mon, vips))
    for i, name in enumerate(("first", "last")):
        got = [f[i] for f in figures]
        print(f"\ntakeover, {name} MASTER decision -> all 4 vips present (ms): "
              f"{', '.join(f'{f:.1f}' for f in got)}; median {statistics.median(got):.1f}, "
              f"max {max(got):.1f}")
    assert len(figures) == 2 * ROUNDS
