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
together, from what each reports (a member's sync ALIVE carries its
release and ranges to its peers: docs/sync.md, "Versions and upgrades").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from fwcluster.carp.core import hardened as carp_hardened
from fwcluster.carp.core import wire as carp_wire
from fwcluster.core import configwire
from syncd.core import expect as sync_expect
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


# (oldest, newest) version of each negotiated protocol between members, as
# each wire module encodes them. Plain CARP (ucarp's wire, RFC-fixed) is
# not negotiated and not listed.
SPEAKS = {"sync": (sync_wire.OLDEST, sync_wire.NEWEST), "config": configwire.SPEAKS,
          "carp_hardened": carp_hardened.SPEAKS, sync_expect.PROTOCOL: sync_expect.SPEAKS}
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


def span(versions) -> str:
    """(2, 3) -> "2-3", (2, 2) -> "2"."""
    low, high = versions
    return str(low) if low == high else f"{low}-{high}"


def ranges(cap: str = "current") -> dict[str, list[int]]:
    """[oldest, newest] of every negotiated protocol a build with cap speaks."""
    return {name: list(speaks(name, cap)) for name in SPEAKS}


def protocols(cap: str = "current") -> dict[str, str]:
    """The wire versions this code speaks, by protocol: the range of each
    negotiated one (a capped build's is its oldest alone)."""
    config_low, config_high = speaks("config", cap)
    config = "-".join(dict.fromkeys(f"FWCC{v}" for v in (config_low, config_high)))
    return {"sync": span(speaks("sync", cap)), "config": config,
            "carp": str(carp_wire.VERSION), "carp_hardened": span(speaks("carp_hardened", cap))}


def peer_newest(name: str, peer: dict | None, sync_version: int | None) -> int | None:
    """The newest version of protocol `name` a peer speaks, as its sync
    ALIVE tells: the range it reports (peer: {protocol: [oldest, newest]}),
    or, from a peer that reports none and speaks only the oldest sync
    version, the previous release's (every protocol's oldest: a build is
    capped as a whole). None: not known (not heard, or a report without
    the protocol)."""
    if peer:
        return peer[name][1] if name in peer else None
    if sync_version is not None and sync_version <= SPEAKS["sync"][0]:
        return SPEAKS[name][0]
    return None


@dataclass(frozen=True)
class Compatibility:
    verdict: str  # "compatible" | "INCOMPATIBLE" | "unknown"
    detail: str


def unintelligible(peer: str, protocol: str, version: int, mine) -> str:
    """Why a member cannot work with a peer whose datagrams are of a
    version it does not speak, and what the operator does about it."""
    advice = ("upgrade this member or roll the peer back" if version > mine[1]
              else f"upgrade {peer} or roll this member back")
    return f"{peer} speaks {protocol} version {version}, this member speaks {span(mine)}: {advice}"


def compatibility(mine: dict, peer: dict | None, sync_version: int | None = None,
                  foreign_sync_version: int | None = None, name: str = "the peer") -> Compatibility:
    """Whether a peer can work with this member: when negotiate() finds a
    version of every protocol both report. mine, peer: {protocol: [oldest,
    newest]} (peer None: it reports none; a release before sync version 3
    does not). sync_version: the sync version in use with it (None: not
    heard); foreign_sync_version: the version of the sync datagrams it
    sends that this member does not speak (it is not heard)."""
    if foreign_sync_version is not None and "sync" in mine:
        return Compatibility("INCOMPATIBLE", unintelligible(name, "sync", foreign_sync_version,
                                                            mine["sync"]))
    if peer:
        common = sorted(set(mine) & set(peer))
        none = [f"{n} {span(mine[n])} here, {span(peer[n])} there" for n in common
                if negotiate(tuple(mine[n]), tuple(peer[n])) is None]
        if none:
            return Compatibility("INCOMPATIBLE", "no common version: " + "; ".join(none))
        used = ", ".join(f"{n} {negotiate(tuple(mine[n]), tuple(peer[n]))}" for n in common)
        return Compatibility("compatible", f"negotiated {used}")
    if sync_version is not None:
        return Compatibility(UNKNOWN, f"sync {sync_version} in use; it does not report its "
                             "release (a release before sync version 3)")
    return Compatibility(UNKNOWN, "not heard on the sync link")


def members(node: str, release: dict, sync: dict | None) -> dict:
    """fwctl status's versions: this member's release ({"version",
    "protocols", "speaks"}, as its daemons report it), and each sync peer's
    (from syncd's status: peers.<name>.version, .speaks, .sync_version,
    .unintelligible, what its sync ALIVE told) with whether it can work
    with this one."""
    mine = release.get("speaks") or {}
    out = {"node": node, "version": release.get("version") or UNKNOWN,
           "protocols": release.get("protocols") or {}, "speaks": mine, "peers": {}}
    sync = sync or {}
    peers = sync.get("peers") if isinstance(sync.get("peers"), dict) else {}
    for name, p in sorted(peers.items()):
        c = compatibility(mine, p.get("speaks"), p.get("sync_version"), p.get("unintelligible"),
                          name)
        out["peers"][name] = {"version": p.get("version") or UNKNOWN, "compatible": c.verdict,
                              "detail": c.detail, "sync_version": p.get("sync_version"),
                              "speaks": p.get("speaks")}
    return out
