"""carpd's live reload (SIGHUP / {"cmd": "reload"}) under 200 live TCP
sessions: vips are added, removed and retimed, a bad config is refused, and
no vip that stayed in the config moves, so no session is lost (carpd alone,
no state sync: a session would die if its vips moved)."""
from __future__ import annotations

import signal
import time

from carp_helpers import fast, stays_settled, transitions, wait_settled
from tests.lab.sync_helpers import Load, start_server
from tests.labkit import LAN_VIP4, SERVER4, WAN_VIP4, default_vips

EXTRA = {"vhid": 5, "interface": "lan0", "address": "192.0.2.5/24", "advbase": 0}


def reload_all(lab, how: str = "control") -> list[dict]:
    out = []
    for m in lab.members:
        if how == "signal":
            lab.daemon(m, "carpd").send_signal(signal.SIGHUP)
        else:
            out.append(lab.control(m, {"cmd": "reload"}, timeout=10))
    return out


def test_reload_adds_removes_and_retimes_without_moving_kept_vips(carp_lab):
    lab = carp_lab(members=2, ipv6=False, **fast())
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1")
    start_server(lab)
    load = Load(lab, "reload", sessions=200, duration=90)
    t0 = time.time() + 0.5
    assert load.wait_alive_since(t0, 30) == 200, load.diagnose(t0)
    kept = {m: {v: n for v, n in transitions(lab, m).items() if v in (1, 2)} for m in lab.members}

    # 1. a new vip: added on both, the others kept.
    lab.write_config(vips=default_vips(False, 0) + [EXTRA])
    for reply in reload_all(lab):
        assert reply["ok"] and reply["added"] == [5] and reply["kept"] == [1, 2], reply
    assert lab.wait_for(lambda: lab.states(5) == {"fw1": "MASTER", "fw2": "BACKUP"}, 10), lab.states(5)
    assert lab.has_addr("fw1", "lan0", "192.0.2.5")

    # 2. fw2's advskew changes and the new vip goes again, by SIGHUP.
    lab.write_config(vips=default_vips(False, 0), advskews={"fw1": 50, "fw2": 230})
    reload_all(lab, "signal")
    assert lab.wait_for(lambda: all(lab.vip_state(m, 5) is None for m in lab.members), 5)
    assert not lab.has_addr("fw1", "lan0", "192.0.2.5")
    assert lab.wait_for(lambda: next(v for v in lab.status("fw2")["vips"] if v["vhid"] == 1)
                        ["advskew"] == 230, 5)

    # 3. a broken config is refused, in one line; the running one stays.
    lab.config_path.write_text(lab.config_path.read_text() + "\n[[vip]]\nvhid = 'x'\n")
    for reply in reload_all(lab):
        assert not reply["ok"] and "vip" in reply["error"] and "\n" not in reply["error"]
    lab.write_config(vips=default_vips(False, 0), advskews={"fw1": 50, "fw2": 230})

    stays_settled(lab, "fw1", vids=[1, 2])
    after = {m: {v: n for v, n in transitions(lab, m).items() if v in (1, 2)} for m in lab.members}
    assert after == kept, f"a kept vip moved: {kept} -> {after}"
    assert lab.has_addr("fw1", "lan0", LAN_VIP4) and lab.has_addr("fw1", "wan0", WAN_VIP4)
    t1 = time.time()
    assert load.wait_alive_since(t1, 15) == 200, load.diagnose(t1)
    assert not load.errors()
    assert lab.ping("client", SERVER4)
    load.stop()
