"""One version per release, from git describe; the protocol versions two
members must share (fwcluster.core.versions, fwcluster/version.py)."""
from __future__ import annotations

import subprocess

import pytest

from fwcluster import version
from fwcluster.core import versions


@pytest.mark.parametrize("describe,dirty,expected", [
    ("v0.2.0-0-gabc123456789", False, "0.2.0"),
    ("v0.2.0-3-gabc123456789", False, "0.2.0.post3+gabc123456789"),
    ("abc123456789", False, "0.0.0+gabc123456789"),
    ("v0.2.0-0-gabc123456789-dirty", False, "0.2.0+gabc123456789.dirty"),
    ("v0.2.0-0-gabc123456789", True, "0.2.0+gabc123456789.dirty"),
    ("v0.2.0-3-gabc123456789-dirty", False, "0.2.0.post3+gabc123456789.dirty"),
    ("abc123456789-dirty", False, "0.0.0+gabc123456789.dirty"),
    ("v1.0rc1-0-gabc123456789", False, "1.0rc1"),
])
def test_describe_becomes_a_pep440_version(describe, dirty, expected):
    assert versions.pep440(describe, dirty) == expected


@pytest.mark.parametrize("bad", ["", "release-0-gabc", "v0.2.0-x-gabc", "v0.2.0-1-gxyz"])
def test_what_is_not_describe_output_is_refused(bad):
    with pytest.raises(versions.VersionError):
        versions.pep440(bad)


def test_a_tag_makes_the_release_in_a_real_repository(tmp_path):
    """The whole path: git describe of a repository, before a tag, on it,
    past it and with a change not committed."""
    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org",
                        *a], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("commit", "-q", "-m", "one")
    assert version.from_git(tmp_path).startswith("0.0.0+g")
    git("tag", "v0.2.0")
    git("tag", "lab-ok")  # not a release tag: never taken for one
    assert version.from_git(tmp_path) == "0.2.0"
    git("commit", "-q", "--allow-empty", "-m", "two")
    assert version.from_git(tmp_path).startswith("0.2.0.post1+g")
    (tmp_path / "f").write_text("2")
    assert version.from_git(tmp_path).endswith(".dirty")
    assert version.from_git(tmp_path, dirty=False) == version.from_git(tmp_path)[:-len(".dirty")]


def test_outside_git_there_is_no_version_from_git(tmp_path):
    assert version.from_git(tmp_path) is None


def test_the_source_tree_has_a_pep440_version():
    from packaging.version import Version
    assert str(Version(version.current())) == version.current()


def test_protocols_name_each_wire_version():
    from fwcluster.carp.core import hardened
    from syncd.core import wire
    p = versions.protocols()
    assert p["sync"] == f"{wire.OLDEST}-{wire.NEWEST}"
    assert p["carp_hardened"] == f"{hardened.OLDEST}-{hardened.VERSION}"
    assert p["config"] == "FWCC1-FWCC2"
    assert versions.protocols("previous") == {"sync": str(wire.OLDEST), "config": "FWCC1", "carp": "2",
                                              "carp_hardened": str(hardened.OLDEST)}


def test_the_sync_wire_encodes_every_version_sync_speaks():
    from syncd.core import wire
    low, high = versions.SPEAKS["sync"]
    assert wire.OLDEST <= low <= high <= wire.NEWEST


def test_ranges_that_overlap_in_every_protocol_are_compatible():
    mine = versions.ranges()
    c = versions.compatibility(mine, versions.ranges("previous"))
    assert c.verdict == "compatible" and "sync 2" in c.detail
    assert "sync 3" in versions.compatibility(mine, dict(mine)).detail
    c = versions.compatibility(mine, dict(mine, sync=[4, 5]))
    assert c.verdict == "INCOMPATIBLE" and "sync 2-3 here, 4-5 there" in c.detail
    # only what both report counts (a newer peer may speak a protocol more)
    assert versions.compatibility(mine, dict(mine, extra=[9, 9])).verdict == "compatible"


def test_a_peer_heard_without_a_report_is_unknown_and_an_unintelligible_one_is_incompatible():
    mine = versions.ranges()
    assert versions.compatibility(mine, None).verdict == "unknown"
    old = versions.compatibility(mine, None, sync_version=2)
    assert old.verdict == "unknown" and "sync 2 in use" in old.detail
    c = versions.compatibility(mine, None, foreign_sync_version=4, name="fw2")
    assert c.verdict == "INCOMPATIBLE"
    assert c.detail == ("fw2 speaks sync version 4, this member speaks 2-3: "
                        "upgrade this member or roll the peer back")
    assert versions.unintelligible("fw2", "sync", 1, (2, 3)).endswith(
        "upgrade fw2 or roll this member back")


def test_members_lists_each_sync_peer_with_its_verdict():
    mine = versions.ranges()
    sync = {"drops": {"bad_version": 3}, "peers": {
        "fw2": {"state": "up", "last_seen": 0.2, "sync_version": 2},
        "fw3": {"state": "down", "last_seen": None, "unintelligible": 4},
        "fw4": {"state": "up", "last_seen": 0.1, "version": "0.3.0", "speaks": dict(mine),
                "sync_version": 3}}}
    release = {"version": "0.2.0", "protocols": versions.protocols(), "speaks": mine}
    m = versions.members("fw1", release, sync)
    assert m["version"] == "0.2.0" and m["speaks"] == mine
    assert m["peers"]["fw2"]["version"] == "unknown" and m["peers"]["fw2"]["compatible"] == "unknown"
    assert m["peers"]["fw2"]["sync_version"] == 2
    assert m["peers"]["fw3"]["compatible"] == "INCOMPATIBLE"
    assert m["peers"]["fw4"]["compatible"] == "compatible"
    assert m["peers"]["fw4"]["version"] == "0.3.0" and m["peers"]["fw4"]["sync_version"] == 3
    assert versions.members("fw1", release, None)["peers"] == {}


def test_negotiation_takes_the_newest_version_both_speak():
    assert versions.negotiate((2, 3), (2, 3)) == 3
    assert versions.negotiate((2, 3), (2, 2)) == 2
    assert versions.negotiate((3, 4), (2, 3)) == 3
    assert versions.negotiate((3, 4), (1, 2)) is None


def test_a_previous_cap_speaks_only_each_oldest_version():
    for name, (low, high) in versions.SPEAKS.items():
        assert versions.speaks(name) == (low, high)
        assert versions.speaks(name, "previous") == (low, low)
    with pytest.raises(versions.VersionError, match="unknown protocol cap"):
        versions.speaks("sync", "older")


def test_peer_newest_reads_a_reported_range_or_infers_the_previous_release():
    reported = {"sync": [2, 3], "carp_hardened": [4, 5]}
    assert versions.peer_newest("carp_hardened", reported, 3) == 5
    assert versions.peer_newest("config", reported, 3) is None          # not reported: not known
    # a release before sync version 3 reports nothing and speaks sync 2 only: the previous one
    oldest = versions.SPEAKS["carp_hardened"][0]
    assert versions.peer_newest("carp_hardened", None, versions.SPEAKS["sync"][0]) == oldest
    assert versions.peer_newest("carp_hardened", None, None) is None     # not heard
    assert versions.peer_newest("carp_hardened", None, 3) is None        # its report is still to come
