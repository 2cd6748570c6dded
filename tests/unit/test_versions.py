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
    assert p["sync"] == str(wire.VERSION) and p["carp_hardened"] == str(hardened.VERSION)
    assert p["config"].startswith("FWCC")


def test_same_protocols_are_compatible_any_difference_is_not():
    mine = versions.protocols()
    assert versions.compatibility(mine, dict(mine)).verdict == "compatible"
    c = versions.compatibility(mine, dict(mine, sync="99"))
    assert c.verdict == "INCOMPATIBLE" and f"sync {mine['sync']} here, 99 there" in c.detail


def test_without_a_report_a_heard_peer_is_unknown_and_foreign_datagrams_prove_a_mismatch():
    mine = versions.protocols()
    assert versions.compatibility(mine, None).verdict == "unknown"
    heard = versions.compatibility(mine, None, heard=True, foreign_sync_version_seen=True)
    assert heard.verdict == "unknown" and "accepted" in heard.detail
    assert versions.compatibility(mine, None, foreign_sync_version_seen=True).verdict == "INCOMPATIBLE"


def test_members_lists_each_sync_peer_with_its_verdict():
    mine = versions.protocols()
    sync = {"drops": {"bad_version": 3}, "peers": {
        "fw2": {"state": "up", "last_seen": 0.2},
        "fw3": {"state": "down", "last_seen": None},
        "fw4": {"state": "up", "last_seen": 0.1, "version": "0.3.0", "protocols": dict(mine)}}}
    m = versions.members("fw1", {"version": "0.2.0", "protocols": mine}, sync)
    assert m["version"] == "0.2.0" and m["protocols"] == mine
    assert m["peers"]["fw2"]["version"] == "unknown" and m["peers"]["fw2"]["compatible"] == "unknown"
    assert m["peers"]["fw3"]["compatible"] == "INCOMPATIBLE"
    assert m["peers"]["fw4"] == {"version": "0.3.0", "compatible": "compatible",
                                 "detail": "same protocol versions"}
    assert versions.members("fw1", {"version": "0.2.0", "protocols": mine}, None)["peers"] == {}


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
