"""The config channel's budget for connections that have not authenticated
(syncd/core/preauth.py): issue 21 #3, silent connections from a member's
address held every slot and a member's push was refused."""
from syncd.core.preauth import Slots


def test_a_newcomer_displaces_the_oldest_silent_connection():
    s = Slots(pending=4, per_source=4, authed=2)
    assert [s.arrive(f"silent{i}", "192.0.2.12") for i in range(4)] == [[]] * 4
    assert s.arrive("member", "192.0.2.12") == ["silent0"]
    assert s.authenticated("member")
    # the member's connection left the budget: it frees a slot, and is never displaced
    assert s.arrive("silent4", "192.0.2.12") == []
    assert s.arrive("silent5", "192.0.2.12") == ["silent1"] and "member" in s.authed


def test_one_source_displaces_only_its_own_past_its_cap():
    s = Slots(pending=8, per_source=2, authed=2)
    s.arrive("a", "192.0.2.11")
    displaced = [c for i in range(6) for c in s.arrive(f"x{i}", "198.51.100.9")]
    assert displaced == ["x0", "x1", "x2", "x3"] and "a" in s.pending


def test_authenticated_slots_are_only_for_key_holders_and_are_capped():
    s = Slots(pending=2, per_source=2, authed=1)
    s.arrive("m1", "192.0.2.11")
    s.arrive("m2", "192.0.2.12")
    assert s.authenticated("m1") and not s.authenticated("m2")
    assert s.arrive("x", "192.0.2.13") == [] and s.arrive("y", "192.0.2.13") == []  # m1, m2 left the budget
    s.leave("m1")
    assert s.authenticated("x") and not s.pending.get("x")
