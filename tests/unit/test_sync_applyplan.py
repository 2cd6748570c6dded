"""syncd.core.applyplan (pure): which kernel requests peers' records become, and
what each answer leads to."""
import errno

from syncd.core.applyplan import TCP_FLAG_BE_LIBERAL, outcome, plan, replica, requests
from syncd.core.entry import OP_DELETE, OP_UPSERT, Entry


def tcp(i: int, **kw) -> Entry:
    return Entry(4, 6, 0, "192.0.2.100", "198.51.100.100", 1024 + i, 80,
                 "198.51.100.100", "192.0.2.100", 80, 1024 + i, status=14, timeout=300,
                 tcp_state=3, flags_orig=0x23, flags_reply=0x33, **kw)


UDP = Entry(4, 17, 0, "192.0.2.100", "198.51.100.100", 5353, 53,
            "198.51.100.100", "192.0.2.100", 53, 5353, status=14, timeout=30)


def test_replicas_track_tcp_windows_liberally_in_both_directions():
    r = replica(tcp(1))
    assert r.flags_orig == 0x23 | TCP_FLAG_BE_LIBERAL and r.flags_reply == 0x33 | TCP_FLAG_BE_LIBERAL
    assert r._replace(flags_orig=0x23, flags_reply=0x33) == tcp(1)   # nothing else changes
    assert replica(r) is r
    assert replica(UDP)._replace(timeout=UDP.timeout) == UDP     # only its timeout grows (grace)
    assert replica(tcp(2)._replace(tcp_state=0)).flags_orig == 0x23   # no protoinfo: nothing to mark


def test_replace_is_unlink_and_create_back_to_back_per_entry():
    records = [(OP_UPSERT, tcp(i)) for i in range(3)]
    work = plan(records, known={}, replace=True)
    assert [k for k, _ in work] == ["replace"] * 3
    reqs = requests(work)
    assert [k for k, _ in reqs] == ["unlink", "create"] * 3
    # Each entry's create follows its own unlink at once: never all deletes first.
    assert [e.osport for _, e in reqs] == [1024, 1024, 1025, 1025, 1026, 1026]
    assert all(e.flags_orig & TCP_FLAG_BE_LIBERAL for _, e in reqs)


def test_plan_kinds():
    known = {tcp(1).key: None}
    work = plan([(OP_UPSERT, tcp(1)), (OP_UPSERT, tcp(2)), (OP_DELETE, tcp(3))], known)
    assert [k for k, _ in work] == ["update", "create", "delete"]
    assert work[2][1] == tcp(3)                      # a delete is sent as it came
    work = plan([(OP_UPSERT, tcp(1)), (OP_DELETE, tcp(2))], known, replace=True, keep_existing=True)
    assert [k for k, _ in work] == ["add", "delete"]  # while master: never replace
    assert requests(work) == work


def test_outcomes():
    assert outcome("unlink", 0) == ("gone", None)
    assert outcome("unlink", errno.ENOENT) == ("gone", None)
    assert outcome("unlink", errno.EPERM) == ("ignored", None)   # its create decides
    assert outcome("create", 0) == ("created", None)
    assert outcome("create", errno.EEXIST) == ("exists", "update")
    assert outcome("update", 0) == ("updated", None)
    assert outcome("update", errno.ENOENT) == ("gone", "create")
    assert outcome("add", 0) == ("created", None)
    assert outcome("add", errno.EEXIST) == ("kept", None)
    assert outcome("delete", 0) == ("deleted", None)
    assert outcome("delete", errno.ENOENT) == ("gone", None)
    assert outcome("create", errno.EINVAL) == ("failed", None)
    assert outcome("delete", errno.EPERM) == ("failed", None)
