"""What carpd and syncd say to each other, in one place (pure).

syncd holds carpd's member demotion while its tables are not in sync, so a
member that is still receiving its bulk resync loses every election
(ordered takeover: state first, then the vips, then the announcements).
docs/contract.md is generated from this module (`python -m
fwcluster.core.contract`); a unit test keeps the two in step.
"""
from __future__ import annotations

# carpd's control socket is {run_dir}/carpd.sock, syncd's {run_dir}/syncd.sock;
# both speak JSON lines (fwcluster.ctlsock).
CARPD = "carpd"
SYNCD = "syncd"

# Demotion sources carpd adds up (the member's total demotion).
SYNC_SOURCE = "syncd"            # set by syncd through set-demotion
MAINTENANCE_SOURCE = "maintenance"  # fwctl maintenance on|off
LINK_SOURCE_PREFIX = "link:"     # link:<ifname>, while a vip interface has no carrier
TRACK_SOURCE_PREFIX = "track:"   # track:<name>, while a [[track]] fails (its weight)

# The demotion syncd asks for while not in sync, and the one carpd holds by
# itself from start until syncd first speaks (within [carp] sync_hold).
SYNC_HOLD_DEMOTE = 32

# Requests carpd answers on its control socket.
SET_DEMOTION = "set-demotion"    # {"cmd", "source": name 1-64 chars, "value": 0-255}
SUBSCRIBE = "subscribe"          # then ROLE lines (snapshot, SNAPSHOT_END, changes)
RELOAD = "reload"                # re-read cluster.toml and the secret (as SIGHUP does)
RELOAD_FROM = "from"             # in a reload one daemon asks of the other: who asks
PEER_SPEAKS = "peer-speaks"      # {"cmd", "member": name, "protocol": "carp_hardened", "newest": N}
CARP_PROTOCOL = "carp_hardened"  # the one protocol peer-speaks tells carpd of
SOURCE_MAX_LEN = 64
DEMOTION_MAX = 255
VERSION_MAX = 255                # a hardened CARP version is the header's version byte

# The subscribe stream: one ROLE line per vhid, SNAPSHOT_END, then a ROLE
# line per change. A ROLE line is {"event": "role", "vhid", "state", "time",
# "master"[, "bucket"]}; "master" is the source address of the master a
# BACKUP hears adverts from (null when it hears none, or is not BACKUP), and
# a line is sent also when only that changes.
ROLE = "role"
SNAPSHOT_END = "snapshot-end"
MASTER = "MASTER"


def sync_demotion(in_sync: bool, carrying: bool) -> int:
    """The demotion syncd asks of carpd. A member that carries traffic (a vip
    or a bucket MASTER) keeps it even before it is in sync: its kernel table,
    untouched by a restart of syncd, is the authority for its flows, and
    demoting it would move every vip twice (to a peer and back after the
    bulk) and stall the flows meanwhile."""
    return 0 if in_sync or carrying else SYNC_HOLD_DEMOTE


def peer_absent(silent_for: float, absent_after: float, heard_by_carp: bool,
                foreign_for: float | None = None) -> bool:
    """Whether a peer that has not answered our bulk request counts as absent
    (so we are in sync without its table and may claim the vips). Silence on
    the sync link alone is not enough while carpd hears a master advert from
    a peer: that peer carries the flows, and only the sync link is broken;
    taking over then would lose every session it carries. Nor while the
    peer's address sends sync datagrams of a version this member does not
    speak (foreign_for: seconds since the last one): it is there, running
    a release this one cannot understand, and may carry every session."""
    return (silent_for >= absent_after and not heard_by_carp
            and not unintelligible(foreign_for, absent_after))


def unintelligible(foreign_for: float | None, absent_after: float) -> bool:
    """A peer is unintelligible while its datagrams of a version we do not
    speak are more recent than absent_after (a peer that stopped sending
    them is absent like any silent one)."""
    return foreign_for is not None and foreign_for < absent_after


def carrying(roles) -> bool:
    """Whether roles (the states of a member's vips and buckets) carry traffic."""
    return MASTER in roles


def role_line(vhid: int, state: str, master: str | None, time: float) -> dict:
    """One ROLE line of the subscribe stream."""
    return {"event": ROLE, "vhid": vhid, "state": state, "time": time, "master": master}


def set_demotion(source: str, value: int) -> dict:
    """The request a daemon sends carpd to set its demotion source."""
    return {"cmd": SET_DEMOTION, "source": source, "value": value}


def reload_request(sender: str) -> dict:
    """The reload a daemon asks of the other after its own: both run one
    config (vips, members, keys). The other does not ask back."""
    return {"cmd": RELOAD, RELOAD_FROM: sender}


def peer_speaks(member: str, newest: int) -> dict:
    """syncd tells carpd the newest hardened CARP version a peer speaks."""
    return {"cmd": PEER_SPEAKS, "member": member, "protocol": CARP_PROTOCOL, "newest": newest}


def check_peer_speaks(req: dict, peers) -> tuple[str, int] | str:
    """(member, newest) of a peer-speaks request, or the error to answer;
    peers: the names of this member's peers."""
    member, protocol, newest = req.get("member"), req.get("protocol"), req.get("newest")
    if protocol != CARP_PROTOCOL:
        return f"{PEER_SPEAKS} tells only \"protocol\": \"{CARP_PROTOCOL}\""
    if member not in peers:
        return f"{PEER_SPEAKS}: {member!r} is not a peer of this member"
    if isinstance(newest, bool) or not isinstance(newest, int) or not 1 <= newest <= VERSION_MAX:
        return f"{PEER_SPEAKS} needs an integer \"newest\" 1-{VERSION_MAX}"
    return member, newest


def check_set_demotion(req: dict) -> tuple[str, int] | str:
    """(source, value) of a set-demotion request, or the error to answer."""
    source, value = req.get("source"), req.get("value")
    if not isinstance(source, str) or not source or len(source) > SOURCE_MAX_LEN:
        return f"{SET_DEMOTION} needs a \"source\" name (1-{SOURCE_MAX_LEN} chars)"
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= DEMOTION_MAX:
        return f"{SET_DEMOTION} needs an integer \"value\" 0-{DEMOTION_MAX}"
    return source, value


def render_doc() -> str:
    """docs/contract.md."""
    return f"""# carpd ⇄ syncd contract

<!-- generated by `python -m fwcluster.core.contract`; do not edit by hand -->

Both daemons import `fwcluster/core/contract.py`; this page is generated from it.

| what | value |
|---|---|
| carpd control socket | `{{run_dir}}/{CARPD}.sock` (JSON lines) |
| syncd control socket | `{{run_dir}}/{SYNCD}.sock` (JSON lines) |
| syncd's demotion source | `{SYNC_SOURCE}` |
| demotion while not in sync | {SYNC_HOLD_DEMOTE} |
| maintenance demotion source | `{MAINTENANCE_SOURCE}` (value: `[carp] maintenance_demote`) |
| link demotion sources | `{LINK_SOURCE_PREFIX}<ifname>` (value: `[carp] link_demote`) |
| track demotion sources | `{TRACK_SOURCE_PREFIX}<name>` (value: the track's `weight`, docs/tracking.md) |

* syncd sends `{{"cmd": "{SET_DEMOTION}", "source": "{SYNC_SOURCE}", "value": N}}` to carpd:
  N = {SYNC_HOLD_DEMOTE} until its bulk resync from every live peer is done, then 0
  (`sync_demotion`). A member that carries traffic (a vip or a bucket
  {MASTER}) gets 0 at once: its kernel table, untouched by a restart of
  syncd, is the authority for its flows, so a restart of syncd on the
  master moves no vip. syncd sends N each time it connects to carpd, after
  reading carpd's snapshot (so it knows whether it carries traffic), and
  whenever N changes.
* A peer that has not answered syncd's bulk request counts as absent (syncd
  is then in sync without it) once it has been silent on the sync link for
  3 s, but never while carpd, as BACKUP, hears a master advert
  (`peer_absent`): the sync link is broken, not the peer, and taking over
  from it would lose every session it carries. The member waits, demoted,
  until the sync link returns. Nor while the peer's sync address sends
  datagrams of a sync version this member does not speak (within those
  3 s; `unintelligible`): the peer runs a release this one cannot
  understand. The member stays demoted, and `fwctl status` / `fwctl sync`
  say which version the peer speaks (docs/sync.md, "Versions and upgrades").
* carpd holds `{SYNC_SOURCE}` = {SYNC_HOLD_DEMOTE} by itself from start when
  `[carp] sync_hold` > 0, until syncd first sets it or `sync_hold` seconds
  pass (a member without syncd is not held forever).
* A source name is 1-{SOURCE_MAX_LEN} characters, a value 0-{DEMOTION_MAX}; the member's
  demotion is the sum of its sources (clamped to 255 on the wire).
* syncd follows carpd's role changes with `{{"cmd": "{SUBSCRIBE}"}}`: first one
  line per vhid with its current role, then `{{"event": "{SNAPSHOT_END}"}}`, then
  one line per change. A role line is `{{"event": "{ROLE}", "vhid", "state",
  "time", "master"[, "bucket"]}}`; `master` is the source address of the
  master a BACKUP hears adverts from, null when it hears none or is not
  BACKUP (bucket lines carry none yet). A line goes out also when only
  `master` changes (a BACKUP that starts hearing a master).
* syncd tells carpd what each peer speaks of hardened CARP with
  `{{"cmd": "{PEER_SPEAKS}", "member": "<name>", "protocol": "{CARP_PROTOCOL}",
  "newest": N}}`, from the peer's sync ALIVE (the ranges it reports, or a
  release before sync version 3: the previous release's), when a peer's
  run first tells it and after every connect to carpd. carpd counts it on
  every vhid: it sends adverts no newer than N (a master at once), so a
  peer of the previous release that joins silent (it cannot read the
  newer adverts) hears a master, and does not claim if syncd heard it
  before its master-down.
* `{{"cmd": "{RELOAD}"}}` makes either daemon re-read cluster.toml and the
  secret, as SIGHUP does (after a config push that changed them); the
  answer says what changed, or why the new config was refused (the old one
  keeps running). Both take the new config by one plan
  (`fwcluster/core/reloadplan.py`), so both refuse the same configs.
* After its own reload (SIGHUP, a request, a config push) a daemon asks the
  other with `{{"cmd": "{RELOAD}", "{RELOAD_FROM}": "<its name>"}}`, so the vips,
  members and keys in force are always those of the one file; a reload
  asked by the other daemon is not passed back.
"""


if __name__ == "__main__":
    print(render_doc(), end="")
