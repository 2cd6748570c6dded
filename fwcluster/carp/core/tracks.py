"""Tracks (pure): what a member's checks of its uplinks make of its demotion.

A track is an interface, a reachability probe or an operator script
(fwcluster.core.config.Track). The shell (fwcluster.carp.tracking) runs the
checks and hands each result here with the time; this module decides, one
rule per function, when the track counts as failed and what that costs:

* `counted`: rise/fall, so one lost echo does not move the vips;
* `may_recover`: the flap bound, so a target that answers and stops by turns
  cannot move the vips more than `flap_limit` times a minute;
* `demotion`: a failed track adds its weight to the member's demotion
  (carpd's source `track:<name>`).

A track starts failed and must rise: a member that has not yet seen its
uplink work must not win over one that has.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from fwcluster.core.config import Track
from fwcluster.core.contract import TRACK_SOURCE_PREFIX

FLAP_WINDOW = 60.0  # seconds over which a track's changes are counted


def source(name: str) -> str:
    """The track's demotion source name in carpd."""
    return TRACK_SOURCE_PREFIX + name


@dataclass(frozen=True)
class TrackState:
    failed: bool = True  # what counts: demotes the member while True
    counted_failed: bool = True  # after rise/fall, before the flap bound
    streak: int = 0  # results in a row that disagree with counted_failed
    last_ok: bool | None = None  # the last check's verdict (after reverse); None: none yet
    last_at: float | None = None
    last_detail: str = ""
    changes: tuple[float, ...] = ()  # times `failed` changed, within the last FLAP_WINDOW

    @property
    def held(self) -> bool:
        """Failed only because of the flap bound."""
        return self.failed and not self.counted_failed


# Operational states of a working link: "unknown" is what drivers without
# operstate support (dummy, some tunnels) report while up.
WORKING_OPERSTATES = ("up", "unknown")


def interface_ok(exists: bool, carrier: bool, operstate: str | None) -> bool:
    """An interface track's check: the link exists, is administratively up
    with carrier, and its operational state says it works (a link can have
    carrier and still be "dormant" or "lowerlayerdown", e.g. 802.1X or a
    VLAN on a dead parent)."""
    return exists and carrier and (operstate or "unknown") in WORKING_OPERSTATES


def counted(failed: bool, streak: int, ok: bool, rise: int, fall: int) -> tuple[bool, int]:
    """Rise/fall: `rise` successes in a row make a failed track good, `fall`
    failures in a row make a good one fail. Returns (failed, streak)."""
    if ok != failed:  # agrees with the current state
        return failed, 0
    streak += 1
    if streak >= (rise if failed else fall):
        return not failed, 0
    return failed, streak


def may_recover(changes: tuple[float, ...], now: float, flap_limit: int) -> bool:
    """The flap bound: a failed track may become good only while its last
    FLAP_WINDOW seconds hold at most flap_limit - 2 changes, leaving room for
    this recovery and one more failure. So no window holds more than
    flap_limit changes, and a member's vips move at most that often per
    track. Failing is never held back: a master that lost its uplink yields."""
    return sum(1 for t in changes if t > now - FLAP_WINDOW) <= flap_limit - 2


def observe(track: Track, state: TrackState, ok: bool, now: float, detail: str = "") -> TrackState:
    """A check's result (before `reverse`) at `now`: the track's new state."""
    ok = ok != track.reverse
    counted_failed, streak = counted(state.counted_failed, state.streak, ok, track.rise, track.fall)
    recent = tuple(t for t in state.changes if t > now - FLAP_WINDOW)
    failed = state.failed
    if counted_failed and not failed:
        failed = True
    elif not counted_failed and failed and may_recover(recent, now, track.flap_limit):
        failed = False
    if failed != state.failed:
        recent += (now,)
    return replace(state, failed=failed, counted_failed=counted_failed, streak=streak,
                   last_ok=ok, last_at=now, last_detail=detail, changes=recent)


def demotion(track: Track, state: TrackState) -> int:
    """What the track adds to the member's demotion."""
    return track.weight if state.failed else 0


def describe(track: Track) -> str:
    """What the track checks, for status and logs."""
    if track.type == "interface":
        what = f"interface {track.interface}"
    elif track.type == "icmp":
        what = f"icmp {track.target}"
    elif track.type == "tcp":
        what = f"tcp {track.target} port {track.port}"
    else:
        what = "script " + " ".join(track.command)
    return what + (" (reverse)" if track.reverse else "")


def status(track: Track, state: TrackState, now: float) -> dict:
    """A track's line in carpd's status (and so in fwctl status and metrics)."""
    return {"name": track.name, "type": track.type, "check": describe(track),
            "state": "held" if state.held else "failed" if state.failed else "ok",
            "failed": state.failed, "weight": track.weight, "demotion": demotion(track, state),
            "last_ok": state.last_ok, "last_detail": state.last_detail,
            "last_age": None if state.last_at is None else round(now - state.last_at, 3),
            "changes_last_minute": sum(1 for t in state.changes if t > now - FLAP_WINDOW),
            "interval": track.interval, "rise": track.rise, "fall": track.fall,
            "flap_limit": track.flap_limit}
