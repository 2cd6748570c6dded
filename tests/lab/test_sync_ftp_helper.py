"""FTP through the cluster with the ftp conntrack helper ([firewall] helpers),
across the loss of the master (real kernel, the shipped strict ruleset,
real carpd and syncd; tests.labkit.ftpserver behind the cluster, ftplib in
the client namespace).

For each mode (passive, active): the control connection is opened through
fw1, a paced download is running when fw1 is lost,
  a. the download completes through fw2 with the right bytes (its data
     connection was replicated like any other);
  b. then a second download on the same control connection opens a new
     data connection through fw2. In active mode the server opens it
     towards the client: the forward policy lets it through only as
     `related`, an expectation fw2's kernel makes from the PORT command
     only because the replicated control connection carries its helper.
  c. (active) PORT went through fw1, fw1 is lost before the server opens
     the data connection: it opens through fw2 only because fw1's
     expectation was replicated there.

The routed lab only: with SNAT the helper rewrites PORT and the control
connection's sequence numbers, which state sync does not carry.
"""
from __future__ import annotations

import json
import time

import pytest

from fwcluster.carp.core.machine import master_down_interval
from tests.labkit import PY, SERVER4, Lab
from tests.labkit.ftpserver import digest
from tests.lab.sync_helpers import TIMING, in_sync, logs, start_member

RATE = 256 * 1024                  # bytes/s the server sends a download at
BIG = 8 * RATE                     # a download of ~8 s: fw1 is lost in its middle
SMALL = 64 * 1024
LOSS_AFTER = 2 * RATE              # bytes received before fw1 is lost
HELPERS = {"helpers": [{"protocol": "ftp"}]}


def all_master(lab: Lab, member: str) -> bool:
    return all(lab.vip_state(member, v["vhid"]) == "MASTER" for v in lab.vips)


def settled(lab: Lab) -> bool:
    return all_master(lab, "fw1") and all(lab.vip_state("fw2", v["vhid"]) == "BACKUP" for v in lab.vips)


def takeover_bound(lab: Lab) -> float:
    """fw2's master-down time and a margin for a loaded machine."""
    return master_down_interval(1, lab.advskews["fw2"]) + 1.0


class FtpClient:
    def __init__(self, lab: Lab, mode: str, plan: list[str]):
        self.lab = lab
        self.status_path = lab.dir / f"ftp-{mode}.json"
        self.go = lab.dir / f"ftp-{mode}.go"
        self.proc = lab.popen("client", [PY, "-m", "tests.labkit.ftpclient", "--host", SERVER4,
                                         "--mode", mode, "--plan", ",".join(plan),
                                         "--status", self.status_path, "--go", self.go])

    def status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}

    def finished(self) -> bool:
        st = self.status()
        return bool(st.get("done") or st.get("error")) or self.proc.poll() is not None

    def retrs(self) -> list[tuple[int, str]]:
        return [(s["bytes"], s["sha256"]) for s in self.status().get("steps", [])
                if s["step"].startswith("retr:")]


@pytest.fixture
def lab():
    with Lab(members=2, prefix="ftph", ipv6=False, firewall=HELPERS, **TIMING) as lab:
        lab.popen("server", [PY, "-m", "tests.labkit.ftpserver", "--listen", SERVER4,
                             "--rate", RATE, "--duration", 300])
        assert lab.wait_for(lambda: ":21 " in lab.run("server", ["ss", "-ltn"]).stdout, 10)
        for m in lab.members:
            start_member(lab, m)
        assert lab.wait_for(lambda: settled(lab), 20), logs(lab)
        assert lab.wait_for(lambda: in_sync(lab), 15), logs(lab)
        yield lab


def test_ruleset_has_the_ftp_helper(lab):
    listed = lab.run("fw1", ["nft", "list", "ruleset"]).stdout
    assert 'ct helper ftp_21 {' in listed and 'tcp dport 21 ct helper set "ftp_21"' in listed


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_ftp_download_survives_node_loss_and_opens_a_new_data_connection(lab, mode):
    client = FtpClient(lab, mode, [f"retr:{BIG}", "wait", f"retr:{SMALL}"])
    assert lab.wait_for(lambda: client.status().get("progress", 0) >= LOSS_AFTER or client.finished(),
                        LOSS_AFTER / RATE + 10), client.status()
    assert not client.finished(), client.status()
    # The control and data connections are on fw2 before fw1 goes.
    assert lab.wait_for(lambda: in_sync(lab), 5), logs(lab)
    control = lab.run("fw2", ["conntrack", "-L", "-p", "tcp", "--dport", "21"]).stdout
    assert "helper=ftp" in control, control

    t_loss = time.monotonic()
    lab.node_loss("fw1")
    assert lab.wait_for(lambda: all_master(lab, "fw2"), takeover_bound(lab)), logs(lab, "fw2")
    client.go.touch()
    # The rest of the download plus the outage, twice over: TCP's
    # retransmission backoff may wait about as long again as the outage
    # lasted before it tries once more; then the small download.
    outage = time.monotonic() - t_loss
    bound = (BIG - LOSS_AFTER) / RATE + 2 * outage + SMALL / RATE + 2.0
    assert lab.wait_for(client.finished, bound), client.status()
    print(f"{mode}: fw2 master {outage:.2f} s after the loss, both downloads done "
          f"{time.monotonic() - t_loss:.2f} s after it (bound {bound:.2f} s)")
    st = client.status()
    assert st.get("error") is None and st.get("done"), (st, logs(lab, "fw2"))
    assert client.retrs() == [(BIG, digest(BIG)), (SMALL, digest(SMALL))]


def test_data_connection_announced_through_the_lost_master_opens_through_the_survivor(lab):
    client = FtpClient(lab, "active", ["announce", "wait", f"retr:{SMALL}"])
    assert lab.wait_for(lambda: bool(client.status().get("steps")) or client.finished(), 10), client.status()
    # fw1's helper made the expectation (PORT); fw2 has it before fw1 goes.
    assert lab.wait_for(lambda: "198.51.100.100" in lab.run("fw2", ["conntrack", "-L", "expect"]).stdout,
                        2.0), (lab.run("fw1", ["conntrack", "-L", "expect"]).stdout, logs(lab))

    t_loss = time.monotonic()
    lab.node_loss("fw1")
    assert lab.wait_for(lambda: all_master(lab, "fw2"), takeover_bound(lab)), logs(lab, "fw2")
    client.go.touch()
    outage = time.monotonic() - t_loss
    # RETR on the control connection (retransmitted after the outage), the
    # server's SYN to the client, the small download.
    assert lab.wait_for(client.finished, 2 * outage + SMALL / RATE + 2.0), client.status()
    print(f"announced through fw1: fw2 master {outage:.2f} s after the loss, download done "
          f"{time.monotonic() - t_loss:.2f} s after it")
    st = client.status()
    assert st.get("error") is None and st.get("done"), (st, logs(lab, "fw2"))
    assert client.retrs() == [(SMALL, digest(SMALL))]
