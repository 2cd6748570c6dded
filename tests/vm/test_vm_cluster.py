"""Two appliances from the built image, end to end (in file order, one lab):
configured and electing, in sync, drill and metrics, 200 sessions through a
hard kill of the master and through its return (ordered takeover), config push.

Also the single-machine checks of the image that need no boot of their own
(read-only root, /config, daemons, ruleset, completion): they run on these
members instead of booting another VM.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from tests.vm.lab import MEMBERS, METRICS, SYNC_HOLD

pytestmark = pytest.mark.image

SESSIONS = 200


def masters(lab, vhid: int) -> list[str]:
    return [m for m in lab.vms if lab.vip_states(m).get(vhid) == "MASTER"]


def wait_roles(lab, master: str, timeout: float = 120) -> None:
    """Every vip MASTER on `master`, BACKUP on the others."""
    def settled():
        for m in lab.vms:
            want = "MASTER" if m == master else "BACKUP"
            states = lab.vip_states(m)
            if sorted(states) != [1, 2] or set(states.values()) != {want}:
                return False
        return True
    lab.wait(f"{master} master of every vip", settled, timeout, interval=2)


def in_sync(lab, member: str) -> bool:
    rc, st = lab.fwctl(member, "sync")
    return rc == 0 and isinstance(st, dict) and st.get("in_sync") is True


def test_members_come_up_configured(vmlab):
    for m in MEMBERS:
        vm = vmlab.vm(m)
        out = vm.check("systemctl is-active fwcluster-carpd fwcluster-syncd fwcluster-ruleset")
        assert out.split() == ["active"] * 3
        rc, st = vmlab.fwctl(m, "status")
        assert rc in (0, 1) and st["node"] == m and st["cluster"] == "vmlab"
        assert vm.check("ip -br link show wan0 && ip -br link show sync0")
    figures = vmlab.state.setdefault("figures", {})
    figures["boot_s"] = {m: round(t, 1) for m, t in vmlab.boots.items()}


def test_image_basics_on_a_member(vmlab):
    """Moved here from tests/image (no boot of its own): read-only root,
    /config writable, tmpfs, volatile journal, links to /config."""
    vm = vmlab.vm("fw2")
    assert "ro" in vm.check("findmnt -no OPTIONS /").split(",")
    rc, out = vm.run("touch /probe")
    assert rc != 0 and "Read-only file system" in out
    vm.check("touch /config/probe && rm /config/probe")
    for path in ("/var/log", "/tmp"):
        assert vm.check(f"findmnt -no FSTYPE {path}") == "tmpfs"
    assert vm.check("journalctl --header | grep -c '/run/log/journal' || true") != "0"
    assert vm.check("readlink /etc/fwcluster/cluster.toml") == "/config/cluster.toml"
    assert vm.check("readlink /var/lib/fwcluster") == "/config/state"
    vm.check("test -s /usr/share/bash-completion/completions/fwctl")
    assert "table inet fwcluster" in vm.check("nft list ruleset")
    assert vm.check("cat /usr/lib/fwcluster/release").startswith("VERSION=")
    # no lab or test tooling in the product
    rc, _ = vm.run("ls /usr/lib/python3/dist-packages/fwcluster/lab.py "
                   "/usr/lib/python3/dist-packages/tests")
    assert rc != 0


def test_one_master_and_in_sync(vmlab):
    wait_roles(vmlab, "fw1")  # advskew 0 wins
    assert masters(vmlab, 1) == ["fw1"] and masters(vmlab, 2) == ["fw1"]
    for m in MEMBERS:
        vmlab.wait(f"{m} in sync", lambda m=m: in_sync(vmlab, m), 120, interval=2)
        rc, st = vmlab.fwctl(m, "sync")
        assert all(p["state"] == "up" for p in st["peers"].values()), st


def test_metrics_scrape_inside_the_vm(vmlab):
    host, port = METRICS.split(":")
    vm = vmlab.vm("fw1")
    for p in (int(port), int(port) + 1):  # carpd, syncd
        out = vm.check("python3 -c \"import urllib.request as u; "
                       f"print(u.urlopen('http://{host}:{p}/metrics', timeout=10).read().decode())\"")
        assert re.search(r"^fwcluster_\w+", out, re.M), out[:500]


def test_drill_inside_the_vm(vmlab):
    rc, r = vmlab.fwctl("fw1", "drill", "--hold", "2", "--timeout", "30", timeout=120)
    assert rc == 0, r
    vmlab.state.setdefault("figures", {})["drill"] = {k: r.get(k) for k in r
                                                      if k.endswith("_seconds")}
    wait_roles(vmlab, "fw1")


def test_sessions_survive_hard_kill_of_the_master(vmlab, sessions):
    lab = vmlab
    wait_roles(lab, "fw1")
    lab.wait("fw2 in sync", lambda: in_sync(lab, "fw2"), 60, interval=2)
    r = lab.wait("replies on every session", lambda: (lambda r: r if r["open"] == SESSIONS and
                 r["oldest_reply_s"] < 1.0 else None)(sessions.report()), 30)
    # every session's conntrack entry has reached fw2 before the power cut
    lab.wait("fw2 tracks the sessions", lambda: lab.fwctl("fw2", "sync")[1].get(
        "local_entries", 0) >= SESSIONS, 60, interval=2)
    sessions.report()  # start a fresh gap window
    lab.kill("fw1")
    lab.wait("fw2 master of every vip", lambda: set(lab.vip_states("fw2").values()) == {"MASTER"},
             60, interval=1)
    time.sleep(10)  # TCP retransmits pick the new path up
    r = sessions.report()
    lab.state.setdefault("figures", {})["failover"] = {
        "gap_s": r["max_gap_s"], "kept": r["open"], "of": SESSIONS}
    print(f"\nVM-to-VM takeover gap (client view): {r['max_gap_s']:.2f} s, "
          f"sessions kept {r['open']}/{SESSIONS}")
    assert r["failed"] == {} and r["open"] == SESSIONS, r
    assert r["oldest_reply_s"] < 2.0, r


def test_killed_member_returns_after_bulk_sync_without_losing_sessions(vmlab, sessions):
    lab = vmlab
    assert SYNC_HOLD > 0
    sessions.report()
    lab.start("fw1")
    lab.login("fw1")
    wait_roles(lab, "fw1", timeout=SYNC_HOLD + 120)
    time.sleep(5)
    r = sessions.report()
    lab.state.setdefault("figures", {})["failback"] = {
        "gap_s": r["max_gap_s"], "kept": r["open"], "of": SESSIONS}
    print(f"\nfailback gap (client view): {r['max_gap_s']:.2f} s, sessions kept {r['open']}/{SESSIONS}")
    assert r["failed"] == {} and r["open"] == SESSIONS, r
    assert r["oldest_reply_s"] < 2.0, r
    # Ordered takeover: fw1's carpd started demoted by syncd ('syncd': N),
    # syncd lifted it (bulk sync done) before any vip went MASTER there --
    # not the sync_hold timeout -- and fw2 had sent fw1 the sessions in bulk.
    lines = lab.vm("fw1").check("journalctl -b -o cat -u fwcluster-carpd --no-pager").splitlines()
    started = next(i for i, ln in enumerate(lines) if "started:" in ln)
    assert "'syncd'" in lines[started], lines[started]
    master_at = next(i for i, ln in enumerate(lines) if "-> MASTER" in ln)
    lifted = [i for i, ln in enumerate(lines) if re.search(r"demotion \d+ -> 0 ", ln)]
    assert lifted and started < lifted[0] < master_at, "\n".join(lines[-40:])
    assert not any("sync_hold of" in ln for ln in lines[:master_at]), "\n".join(lines[-40:])
    bulk = lab.vm("fw2").check("journalctl -b -o cat -u fwcluster-syncd --no-pager | "
                               "grep 'bulk transfer of' || true")
    sent = [int(n) for n in re.findall(r"bulk transfer of (\d+) entries to (?:fw1|203\.0\.113\.1)\b", bulk)]
    assert sent and sent[-1] >= SESSIONS, bulk


def test_config_push_changes_the_peer(vmlab):
    lab = vmlab
    fw1, fw2 = lab.vm("fw1"), lab.vm("fw2")
    # A change the peer's ruleset shows: metrics reachable from the sync link.
    fw1.check("sed -i 's/^listen = .*/listen = \"0.0.0.0:9100\"/' /config/cluster.toml")
    rc, r = lab.fwctl("fw1", "config", "push", timeout=120)
    text = json.dumps(r)
    if rc != 0 and re.search(r"Read-only file system|mkdtemp|/etc/fwcluster", text):
        pytest.xfail(f"config push cannot install on the read-only root (issue 11, "
                     f"fwcluster/configstore.py staging): {text[:300]}")
    assert rc == 0, r
    lab.wait("fw2 has the pushed cluster.toml",
             lambda: "0.0.0.0:9100" in fw2.check("cat /config/cluster.toml"), 60, interval=2)
    lab.wait("fw2's ruleset opens the metrics ports",
             lambda: "9100" in fw2.check("nft list chain inet fwcluster input"), 60, interval=2)
