"""fwctl upgrade refuses on a member that carries traffic (carpd's status
as it answers): master of a vip, or owner of buckets in active-active."""
from __future__ import annotations

from fwcluster.core import slots


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
