"""Release versions and the protocol versions a release speaks (pure).

One version number names a release everywhere (the image and its bundle,
/etc/os-release, fwctl status, fwcluster_build_info): a git tag vX.Y.Z is
the release, and `git describe` of a tree turns into a PEP 440 version by
pep440(). fwcluster/version.py finds the describe output (or the version
the image builder wrote); this module only computes.

Every protocol between members has a range of versions this code speaks,
SPEAKS[name] = (oldest, newest): a release speaks its own version and its
predecessor's (N-1), and each pair of members uses the newest both speak
(negotiate). A build can be capped to its oldest versions ("previous"):
that is how the lab runs the upgrade from the previous release before a
tagged one exists. compatibility() says whether two members can work
together, from what each reports.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from fwcluster.carp.core import hardened as carp_hardened
from fwcluster.carp.core import wire as carp_wire
from fwcluster.core import configwire
from syncd.core import wire as sync_wire

TAG_PATTERN = "v[0-9]*"  # `git describe --match`: other tags never name a release
UNKNOWN = "unknown"
_DESCRIBE = re.compile(r"^(?:v(?P<tag>[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?)-(?P<distance>[0-9]+)-)?"
                       r"g?(?P<commit>[0-9a-f]{4,40})$")


class VersionError(ValueError):
    pass


def pep440(describe: str, dirty: bool = False) -> str:
    """`git describe --tags --long --always [--dirty]` as a PEP 440 version:
    v0.2.0-0-gabc -> 0.2.0 (the release itself), v0.2.0-3-gabc ->
    0.2.0.post3+gabc, no tag (just abc) -> 0.0.0+gabc; uncommitted changes
    (a -dirty suffix, or dirty=True) add .dirty, and name the commit even
    on a tag: a changed tree is not the release."""
    text = describe.strip()
    if text.endswith("-dirty"):
        text, dirty = text[:-len("-dirty")], True
    m = _DESCRIBE.match(text)
    if not m:
        raise VersionError(f"not the output of git describe --tags --long --always: {describe!r}")
    tag, distance, commit = m["tag"] or "0.0.0", int(m["distance"] or 0), m["commit"]
    public = f"{tag}.post{distance}" if distance else tag
    local = [f"g{commit}"] if (distance or dirty or not m["tag"]) else []
    if dirty:
        local.append("dirty")
    return public + ("+" + ".".join(local) if local else "")


# (oldest, newest) version of each negotiated protocol between members.
# Plain CARP (ucarp's wire, RFC-fixed) is not negotiated and not listed.
SPEAKS = {"sync": (2, 2), "config": (1, 2), "carp_hardened": (4, 5)}
CAPS = ("current", "previous")  # previous: speak only each protocol's oldest version


def speaks(name: str, cap: str = "current") -> tuple[int, int]:
    """The versions of protocol `name` a build with `cap` speaks."""
    if cap not in CAPS:
        raise VersionError(f"unknown protocol cap {cap!r} (one of {', '.join(CAPS)})")
    low, high = SPEAKS[name]
    return (low, low) if cap == "previous" else (low, high)


def negotiate(mine: tuple[int, int], theirs: tuple[int, int]) -> int | None:
    """The newest version both ranges hold, None when they do not overlap."""
    high = min(mine[1], theirs[1])
    return high if high >= max(mine[0], theirs[0]) else None


def protocols() -> dict[str, str]:
    """The wire versions this code speaks, by protocol."""
    return {"sync": str(sync_wire.VERSION), "config": configwire.VERSION.decode(),
            "carp": str(carp_wire.VERSION), "carp_hardened": str(carp_hardened.VERSION)}


@dataclass(frozen=True)
class Compatibility:
    verdict: str  # "compatible" | "INCOMPATIBLE" | "unknown"
    detail: str


def compatibility(mine: dict[str, str], peer: dict[str, str] | None, heard: bool = False,
                  foreign_sync_version_seen: bool = False) -> Compatibility:
    """Whether a peer can work with this member: only the same version of
    every protocol does, until a release negotiates an older one. peer: the
    protocol versions it reported (None: it reported none). heard: its sync
    datagrams are accepted, so it speaks this sync version at least; not
    heard while datagrams of another sync version arrive (syncd's
    bad_version drops) proves a mismatch."""
    if peer:
        differ = [f"{name} {mine.get(name, UNKNOWN)} here, {peer.get(name, UNKNOWN)} there"
                  for name in sorted(set(mine) | set(peer)) if mine.get(name) != peer.get(name)]
        if differ:
            return Compatibility("INCOMPATIBLE", "protocol versions differ: " + "; ".join(differ))
        return Compatibility("compatible", "same protocol versions")
    if heard:
        return Compatibility(UNKNOWN, f"its sync datagrams are accepted (sync {mine.get('sync')}); "
                             "it does not report its release")
    if foreign_sync_version_seen:
        return Compatibility("INCOMPATIBLE", "not heard, and sync datagrams of another protocol "
                             f"version arrive (this member speaks sync {mine.get('sync', UNKNOWN)})")
    return Compatibility(UNKNOWN, "not heard on the sync link")


def members(node: str, release: dict, sync: dict | None) -> dict:
    """fwctl status's versions: this member's release ({"version",
    "protocols"}, as its daemons report it), and each sync peer's with
    whether it can work with this one. A peer's version and protocols come
    from syncd's status when it reports them (peers.<name>.version and
    .protocols); today's sync wire does not carry them, so they read unknown."""
    mine = release.get("protocols") or {}
    out = {"node": node, "version": release.get("version") or UNKNOWN, "protocols": mine,
           "peers": {}}
    sync = sync or {}
    foreign = bool((sync.get("drops") or {}).get("bad_version"))
    peers = sync.get("peers") if isinstance(sync.get("peers"), dict) else {}
    for name, p in sorted(peers.items()):
        heard = p.get("last_seen") is not None and p.get("state") != "down"
        c = compatibility(mine, p.get("protocols"), heard, foreign)
        out["peers"][name] = {"version": p.get("version") or UNKNOWN, "compatible": c.verdict,
                              "detail": c.detail}
    return out
