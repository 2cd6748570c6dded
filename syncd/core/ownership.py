"""Who owns a flow: the member that forwards it now (pure).

One rule for every decision state sync makes about a flow (refresh, bulk
and anti-entropy adoption, taking a peer's claim, applying a peer's record,
sending a local delete): `forwards(key, fwd)`. What this member forwards
comes from carpd's elections, the same ones the kernel's forwarding follows
(the vips in active-standby, the failover groups won when there are
several, the owned hash buckets in active-active), so ownership moves with
a handover at once, idle flows included, without waiting for a packet of
the flow (docs/sync.md, "Who owns a flow").

Several failover groups: which group carries a flow is not in its tuple.
The ruleset writes it into the conntrack mark at the flow's first packet
(config.GROUP_MARK_*: the vip MAC it was sent to), the mark travels in the
wire record, and forwards() reads it there.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

from fwcluster.core.config import GROUP_MARK_MASK, GROUP_MARK_SHIFT
from fwcluster.core.hashbuckets import HASH_SEED, MASTER, jhash

ORIGIN = "origin"        # no carpd, roles unknown: every member carries traffic
STANDBY = "standby"      # active-standby: the master forwards every flow
GROUPS = "groups"        # several failover groups: a flow goes through its group's master
BALANCED = "balanced"    # active-active: a flow goes through its bucket's owner

# The group bits of the mark inside a wire record (wire.py: the mark is the
# big-endian u32 at offset 16): all in its top byte, one index and a mask.
_GROUP_BYTE = 16 + (3 - GROUP_MARK_SHIFT // 8)
_GROUP_BITS = (GROUP_MARK_MASK >> (GROUP_MARK_SHIFT // 8 * 8)) & 0xFF
_GROUP_SHIFT = GROUP_MARK_SHIFT % 8


@dataclass(frozen=True)
class Forwarding:
    """What this member forwards now. STANDBY: owned is {0} on the master
    (one bucket: every flow), empty on a backup; GROUPS: the indexes of
    the failover groups (of `buckets`, config order) this member is master
    of; BALANCED: the buckets (of `buckets`) whose election this member won."""
    mode: str = ORIGIN
    buckets: int = 1
    owned: frozenset = frozenset()


NOTHING = Forwarding(STANDBY)
EVERYTHING = Forwarding(STANDBY, 1, frozenset({0}))


def forwards(key: bytes, fwd: Forwarding, rec: bytes = b"") -> bool | None:
    """Whether this member forwards the flow of a conntrack key
    (digest.record_key) and its wire record (GROUPS reads the group from its
    mark; a record without group bits is the first group's); None in ORIGIN
    mode, where nobody knows and the caller falls back to the origin rule
    (ours unless an up peer's view holds it)."""
    mode = fwd.mode
    if mode == STANDBY:
        return bool(fwd.owned)
    if mode == ORIGIN:
        return None
    if mode == GROUPS:
        return (rec[_GROUP_BYTE] & _GROUP_BITS) >> _GROUP_SHIFT in fwd.owned
    return key_bucket(key, fwd.buckets) in fwd.owned


def key_bucket(key: bytes, buckets: int) -> int:
    """hashbuckets.flow_bucket of a key's original addresses (the packed
    bytes the kernel hashes): family at 0, proto 1, zone 2:4, then the
    original source and destination."""
    n = 4 if key[0] == 4 else 16
    return _bucket(key[4:4 + 2 * n], buckets)


@lru_cache(maxsize=65536)
def _bucket(addresses: bytes, buckets: int) -> int:
    # reciprocal_scale(jhash(src . dst), buckets), as nft_jhash does
    return (jhash(addresses, HASH_SEED) * buckets) >> 32


def gained(old: Forwarding, new: Forwarding) -> bool:
    """The new value forwards flows the old one did not: they must be
    claimed at once (their old owner's copies go stale)."""
    if new.mode == ORIGIN or not new.owned:
        return False
    return old.mode != new.mode or old.buckets != new.buckets or not new.owned <= old.owned


def yielded(old: Forwarding, new: Forwarding) -> bool:
    """The new value stops forwarding flows the old one did (a vip, a
    group or a bucket moved away): the entries the filter has not
    replicated yet go to the new owner at once (syncd/handover.py)."""
    if old.mode == ORIGIN or new.mode == ORIGIN or not old.owned:
        return False
    return old.mode != new.mode or old.buckets != new.buckets or not old.owned <= new.owned


def handed_over(key: bytes, rec: bytes, old: Forwarding, new: Forwarding) -> bool:
    """This member forwarded the flow under old and does not under new."""
    return bool(forwards(key, old, rec)) and not forwards(key, new, rec)


def from_roles(roles: Mapping[int, str], bucket_vhids: Mapping[int, int],
               buckets: int, vhid_groups: Mapping[int, int] | None = None) -> Forwarding:
    """The value carpd's role events make: roles is vhid -> CARP state as
    published, bucket_vhids vhid -> bucket of each bucket election
    (active-active; empty in active-standby), vhid_groups vhid -> index of
    its failover group when there are several (group_indexes). A group is
    this member's while any of its vips is (its vips move together). No
    roles yet: ORIGIN."""
    if not roles:
        return Forwarding()
    if bucket_vhids:
        return Forwarding(BALANCED, buckets, frozenset(
            b for vhid, b in bucket_vhids.items() if roles.get(vhid) == MASTER))
    if vhid_groups:
        owned = frozenset(g for vhid, g in vhid_groups.items() if roles.get(vhid) == MASTER)
        return Forwarding(GROUPS, max(vhid_groups.values()) + 1, owned) if owned else NOTHING
    return EVERYTHING if MASTER in roles.values() else NOTHING


def group_indexes(cfg) -> dict[int, int]:
    """vhid -> the index of its failover group (the group's mark), or
    nothing with one group: then the mark is not read at all."""
    if len(cfg.groups) < 2:
        return {}
    return {v.vhid: cfg.group_index(v.group) for v in cfg.vips}
