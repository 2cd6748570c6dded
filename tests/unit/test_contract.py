"""The carpd/syncd rules of fwcluster/core/contract.py (pure)."""
from fwcluster.core import contract
from fwcluster.core.contract import SYNC_HOLD_DEMOTE, peer_absent, sync_demotion


def test_a_member_carrying_traffic_is_never_demoted_for_sync():
    """A restart of syncd on the master (in_sync False again) must not hand
    the vips to a peer and take them back after the bulk (issue 19 #3)."""
    assert sync_demotion(in_sync=False, carrying=False) == SYNC_HOLD_DEMOTE
    assert sync_demotion(in_sync=False, carrying=True) == 0
    assert sync_demotion(in_sync=True, carrying=False) == 0


def test_a_peer_heard_through_carp_is_never_absent():
    """Sync link down, CARP link up: the silent peer carries the flows
    (issue 19 #4), so silence alone does not make it absent."""
    assert not peer_absent(2.9, 3.0, heard_by_carp=False)
    assert peer_absent(3.0, 3.0, heard_by_carp=False)
    assert not peer_absent(3600.0, 3.0, heard_by_carp=True)


def test_carrying_is_any_master_role():
    assert contract.carrying(["BACKUP", "MASTER"])
    assert not contract.carrying(["BACKUP", "INIT"]) and not contract.carrying([])


def test_peer_speaks_requests_are_checked():
    req = contract.peer_speaks("fw2", 4)
    assert contract.check_peer_speaks(req, ["fw2"]) == ("fw2", 4)
    assert "not a peer" in contract.check_peer_speaks(req, ["fw3"])
    assert "protocol" in contract.check_peer_speaks({**req, "protocol": "sync"}, ["fw2"])
    for bad in (0, 256, True, "4", None):
        assert "newest" in contract.check_peer_speaks({**req, "newest": bad}, ["fw2"])
