"""How peers' records become kernel requests, and what each answer leads to
(pure: no netlink; syncd.conntrack sends the requests and feeds the answers).

Work items are (kind, Entry):
  create   NEW with NLM_F_CREATE|EXCL     EEXIST -> update
  update   NEW without NLM_F_CREATE       ENOENT -> create
  add      create that keeps what exists  EEXIST -> kept (a bulk while master)
  replace  unlink + create, back to back  (a bulk while backup)
  delete   DELETE                         ENOENT -> nothing to do
  unlink   the delete half of a replace   its create follows at once

A replace goes out as two requests next to each other in one batch, so a
live flow's entry is missing only between those two kernel operations, never
for the length of a whole bulk.
"""
from __future__ import annotations

import errno

from syncd.core.entry import OP_DELETE, TCP, Entry

# include/uapi/linux/netfilter/nf_conntrack_tcp.h
TCP_FLAG_BE_LIBERAL = 0x08
# Seconds a replica of a non-TCP flow outlives the timeout it was sent
# with. The owner re-sends such a flow every 30 s (daemon.REFRESH_INTERVAL)
# with the timeout the kernel reports in whole seconds (truncated), on
# 0.25 s housekeeping ticks, paced behind live events: sent with exactly
# its timeout, a 30 s flow's copy ran out just before the refresh that
# keeps it. A whole missed refresh of slack costs nothing: the owner's
# DESTROY removes the copy when the flow really ends.
REPLICA_GRACE = 30


def replica(e: Entry) -> Entry:
    """The entry as a peer commits it. ctnetlink cannot carry TCP window
    data, so the kernel picks the window up from the next packets; like its
    own mid-stream pickup (and conntrackd without TCPWindowTracking) that
    pickup must be liberal, or a flow whose first packets after a takeover
    come in an awkward order (both members briefly master, retransmissions,
    ACKs for data the new master never saw) is dropped as INVALID for good.
    A non-TCP replica gets REPLICA_GRACE more seconds (above)."""
    if e.proto != TCP:
        return e._replace(timeout=e.timeout + REPLICA_GRACE)
    if not e.tcp_state:
        return e
    lib = TCP_FLAG_BE_LIBERAL
    if e.flags_orig & e.flags_reply & lib:
        return e
    return e._replace(flags_orig=e.flags_orig | lib, flags_reply=e.flags_reply | lib)


def plan(records, known, replace: bool = False, keep_existing: bool = False) -> list:
    """Work items for records ((op, Entry), ...), in order."""
    work = []
    for op, e in records:
        if op == OP_DELETE:
            work.append(("delete", e))
            continue
        e = replica(e)
        if keep_existing:
            work.append(("add", e))
        elif replace:
            work.append(("replace", e))
        elif e.key in known:
            work.append(("update", e))
        else:
            work.append(("create", e))
    return work


def requests(work) -> list:
    """Kernel requests (kind, Entry) for work items: a replace becomes an
    unlink immediately followed by a create."""
    out = []
    for kind, e in work:
        if kind == "replace":
            out.append(("unlink", e))
            out.append(("create", e))
        else:
            out.append((kind, e))
    return out


def outcome(kind: str, code: int) -> tuple[str, str | None]:
    """What an answer means: ("created"|"updated"|"deleted"|"kept"|"gone"|
    "failed", retry kind or None). "gone": the entry is not in the kernel."""
    if kind == "unlink":
        return ("gone" if code in (0, errno.ENOENT) else "ignored"), None
    if kind == "add":
        if code == 0:
            return "created", None
        return ("kept", None) if code == errno.EEXIST else ("failed", None)
    if kind == "delete":
        return ("deleted" if code == 0 else "gone" if code == errno.ENOENT else "failed"), None
    if code == 0:
        return ("created" if kind == "create" else "updated"), None
    if kind == "create" and code == errno.EEXIST:
        return "exists", "update"
    if kind == "update" and code == errno.ENOENT:
        return "gone", "create"
    return "failed", None
