"""Live reload of both daemons under 200 live TCP sessions (issue 14): the
cluster's config changes a vip, a member and the secret; syncd reloads (as
after a config push or SIGHUP) and tells carpd to reload. No session is
lost, no vip that stayed in the config moves, state sync carries on under
the new key."""
from __future__ import annotations

import os
import re
import time

from carp_helpers import stays_settled, transitions, wait_settled
from tests.lab.sync_helpers import Load, logs, start_server, syncd_status
from tests.labkit import default_vips

NEW_VIP = {"vhid": 5, "interface": "lan0", "address": "192.0.2.5/24", "advbase": 1}


def drop_member(text: str, name: str) -> str:
    """cluster.toml without one [[member]] table."""
    blocks = re.split(r"(?m)^(?=\[)", text)
    return "".join(b for b in blocks if not (b.startswith("[[member]]") and f'name = "{name}"' in b))


def synced(lab, live) -> bool:
    """Every live member in sync with the other live ones (fw3, down, aside)."""
    for m in live:
        st = syncd_status(lab, m)
        peers = st.get("peers", {})
        if not st.get("in_sync") or any(peers.get(p, {}).get("state") != "up" or peers[p]["unacked"]
                                        for p in live if p != m):
            return False
    return True


def test_vips_members_and_secret_change_under_200_sessions(lab_factory):
    lab = lab_factory(members=3, ipv6=False, carp={"sync_hold": 20})
    live = ["fw1", "fw2"]  # fw3 is configured but down: it will be removed
    for m in live:
        lab.start_syncd(m)
    for m in live:
        lab.start_carpd(m)
    wait_settled(lab, "fw1", timeout=20, members=live)
    assert lab.wait_for(lambda: synced(lab, live), 20), logs(lab, *live)
    start_server(lab)
    load = Load(lab, "live-reload", sessions=200, duration=120)
    t0 = time.time() + 0.5
    assert load.wait_alive_since(t0, 30) == 200, load.diagnose(t0)
    before = {m: transitions(lab, m) for m in live}

    # The change: a vip more, fw3 gone from the members, a new secret.
    lab.write_config(vips=default_vips(False, 1) + [NEW_VIP], carp={"sync_hold": 20})
    lab.config_path.write_text(drop_member(lab.config_path.read_text(), "fw3"))
    secret = "reload-" + os.urandom(12).hex()
    tmp = lab.secret_path.with_suffix(".new")
    tmp.write_text(secret + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, lab.secret_path)
    t_change = time.time()
    for m in live:
        reply = lab.control(m, {"cmd": "reload"}, daemon="syncd", timeout=10)
        assert reply["ok"], reply

    # carpd was told by syncd: the new vip is elected, the kept ones stay.
    assert lab.wait_for(lambda: lab.states(5, live) == {"fw1": "MASTER", "fw2": "BACKUP"}, 15), \
        logs(lab, *live)
    stays_settled(lab, "fw1", members=live, vids=[1, 2])
    after = {m: {v: n for v, n in transitions(lab, m).items() if v in (1, 2)} for m in live}
    assert after == {m: {v: n for v, n in before[m].items() if v in (1, 2)} for m in live}
    # syncd: fw3 is no longer a peer, fw1 and fw2 are in sync under the new key.
    assert lab.wait_for(lambda: all(set(syncd_status(lab, m).get("peers", {})) ==
                                    set(live) - {m} for m in live), 10)
    assert lab.wait_for(lambda: synced(lab, live), 20), logs(lab, *live)
    assert load.wait_alive_since(time.time(), 20) == 200, load.diagnose(t_change)
    assert not load.errors()
    print(f"\nlive reload: 200 of 200 sessions kept; vips 1, 2 kept their roles "
          f"(transitions {after}); vhid 5 added")
    load.stop()
