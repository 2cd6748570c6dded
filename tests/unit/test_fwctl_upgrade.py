"""fwctl upgrade refuses on a member that carries traffic (carpd's status
as it answers): master of a vip, or owner of buckets in active-active; and
--rollback boots the other slot again, if it can be trusted."""
from __future__ import annotations

import json
import os

import pytest

from fwcluster.core import slots
from fwcluster.fwctl import main as fwctl
from fwcluster.fwctl import upgrade


def carp_status(vip_state="BACKUP", owned=None, maintenance=False) -> dict:
    st = {"node": "fw2", "maintenance": maintenance, "balance": "active-standby",
          "vips": [{"vhid": 1, "state": vip_state}, {"vhid": 2, "state": vip_state}]}
    if owned is not None:
        st["balance"] = "active-active"
        st["buckets"] = {"count": 4, "owned": owned, "applied": owned, "error": None,
                         "by_master": {}, "per_bucket": []}
    return st


def test_a_backup_without_buckets_may_upgrade():
    assert slots.cluster_blocker(carp_status()) is None
    assert slots.cluster_blocker(carp_status(owned=[])) is None


def test_the_vip_master_is_refused():
    why = slots.cluster_blocker(carp_status("MASTER"))
    assert "MASTER of vip 1, 2" in why and "fwctl maintenance on" in why


def test_an_active_active_member_owning_buckets_is_refused_though_backup_of_the_vips():
    why = slots.cluster_blocker(carp_status("BACKUP", owned=[1, 3]))
    assert why is not None
    assert "bucket 1, 3" in why and "fwctl maintenance on" in why


def test_maintenance_lets_it_go():
    assert slots.cluster_blocker(carp_status("MASTER", owned=[0], maintenance=True)) is None


# --- fwctl upgrade --rollback, against a stand-in rauc on PATH ------------------

FAKE_RAUC = """#!/bin/sh
echo "$*" >> "$RAUC_LOG"
case "$*" in
  "status --detailed --output-format=json") cat "$RAUC_STATUS" ;;
  "status mark-active other") echo "rauc-Message: marked slot rootfs.0 as active" ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"""


def rauc_json(b_status="good", primary="rootfs.1", a_version="0.1.0") -> dict:
    """Slot B runs the upgrade (0.2.0, marked good); A holds the release before."""
    return {"compatible": "fwcluster-amd64", "booted": "B", "boot_primary": primary, "slots": [
        {"rootfs.0": {"class": "rootfs", "device": "/dev/vda3", "bootname": "A",
                      "boot_status": b_status,
                      "slot_status": {"bundle": {"version": a_version} if a_version else {}}}},
        {"rootfs.1": {"class": "rootfs", "device": "/dev/vda4", "bootname": "B", "boot_status": "good",
                      "slot_status": {"bundle": {"version": "0.2.0"},
                                      "installed": {"timestamp": "T1"}}}}]}


@pytest.fixture
def rauc(tmp_path, monkeypatch):
    """A rauc that answers `status` from a file and logs every call."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "rauc").write_text(FAKE_RAUC)
    (bindir / "rauc").chmod(0o755)
    log, st = tmp_path / "rauc.log", tmp_path / "status.json"
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("RAUC_LOG", str(log))
    monkeypatch.setenv("RAUC_STATUS", str(st))
    monkeypatch.setattr(upgrade, "CONFIG_FILE", tmp_path / "no-cluster.toml")  # not configured

    def calls(status: dict) -> None:
        st.write_text(json.dumps(status))
    calls.log = lambda: log.read_text().splitlines()
    return calls


def test_rollback_marks_the_other_slot_active(rauc, capsys):
    rauc(rauc_json())
    assert fwctl(["upgrade", "--rollback", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"next_boot": "A", "version": "0.1.0", "running": "B"}
    assert rauc.log()[-1] == "status mark-active other"


def test_rollback_to_the_slot_the_card_was_flashed_with(rauc, capsys):
    """RAUC has no bundle record (no version) of a slot it never installed,
    but the flashed slot is good: after the first upgrade it is the way back."""
    rauc(rauc_json(a_version=None))
    assert fwctl(["upgrade", "--rollback", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"next_boot": "A", "version": slots.FLASHED,
                                                   "running": "B"}
    assert rauc.log()[-1] == "status mark-active other"


@pytest.mark.parametrize("status,why", [
    (rauc_json(b_status="bad"), "marked bad, not good"),
    (rauc_json(a_version=None, b_status="bad"), "holds no release"),
    (rauc_json(primary="rootfs.0"), "already the next boot"),
])
def test_rollback_refuses_a_slot_it_cannot_trust_and_marks_nothing(rauc, capsys, status, why):
    rauc(status)
    assert fwctl(["upgrade", "--rollback"]) == 1
    assert why in capsys.readouterr().err
    assert "status mark-active other" not in rauc.log()


def test_rollback_is_refused_while_this_member_carries_traffic(rauc, capsys, monkeypatch, tmp_path):
    """The rule of an install (slots.cluster_blocker): carpd's status says
    this member is master of a vip."""
    from fwcluster import configfile
    from fwcluster import fwctl as fwctl_pkg
    rauc(rauc_json())
    config = tmp_path / "cluster.toml"
    config.write_text("")
    monkeypatch.setattr(upgrade, "CONFIG_FILE", config)
    monkeypatch.setattr(configfile, "load", lambda path: object())
    monkeypatch.setattr(fwctl_pkg, "ask", lambda cfg, daemon, req, **kw: carp_status("MASTER"))
    assert fwctl(["upgrade", "--rollback"]) == 1
    assert "MASTER of vip 1, 2" in capsys.readouterr().err
    assert rauc.log() == []
    assert fwctl(["upgrade", "--rollback", "--force", "--json"]) == 0
    assert rauc.log()[-1] == "status mark-active other"
