"""Role hooks (pure): when a failover group changes role, and what its hooks
are told. The shell (fwcluster.carp.hooks) runs them.

A member's vips move together (core.group), but each vhid's machine reports
its own change; the group's role is the one a service that must follow the
vips cares about, so hooks run when that changes, once, not per vhid.
"""
from __future__ import annotations

MASTER, BACKUP, INIT = "MASTER", "BACKUP", "INIT"


def group_role(states) -> str:
    """The group's role from its vhids' states: MASTER while any vip is
    here (traffic reaches this member), else BACKUP while any election
    runs, else INIT (no link, or shut down)."""
    states = set(states)
    for role in (MASTER, BACKUP):
        if role in states:
            return role
    return INIT


def event(group: str, vhids, old: str, new: str, reason: str, node: str, time: float) -> dict:
    """What a hook gets as JSON on stdin."""
    return {"group": group, "vhids": sorted(vhids), "old": old, "new": new, "reason": reason,
            "node": node, "time": time}


def argv(hook: str, ev: dict) -> list[str]:
    """A hook's command line: <group> <old> <new> <reason>."""
    return [hook, ev["group"], ev["old"], ev["new"], ev["reason"]]


def runnable(name: str) -> bool:
    """Which directory entries are hooks (run-parts' habit): no hidden files,
    editor backups or package leftovers."""
    return not name.startswith(".") and not name.endswith(("~", ".dpkg-old", ".dpkg-dist",
                                                            ".dpkg-new", ".disabled"))
