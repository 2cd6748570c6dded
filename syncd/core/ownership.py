"""Who owns a flow: the member that forwards it now (pure).

One rule for every decision state sync makes about a flow (refresh, bulk
and anti-entropy adoption, taking a peer's claim, applying a peer's record,
sending a local delete): `forwards(key, fwd)`. What this member forwards
comes from carpd's elections, the same ones the kernel's forwarding follows
(the vips in active-standby, the owned hash buckets in active-active), so
ownership moves with a handover at once, idle flows included, without
waiting for a packet of the flow (docs/sync.md, "Who owns a flow").
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

from fwcluster.core.hashbuckets import HASH_SEED, MASTER, jhash

ORIGIN = "origin"        # no carpd, roles unknown: every member carries traffic
STANDBY = "standby"      # active-standby: the master forwards every flow
BALANCED = "balanced"    # active-active: a flow goes through its bucket's owner


@dataclass(frozen=True)
class Forwarding:
    """What this member forwards now. STANDBY: owned is {0} on the master
    (one bucket: every flow), empty on a backup; BALANCED: the buckets
    (of `buckets`) whose election this member won."""
    mode: str = ORIGIN
    buckets: int = 1
    owned: frozenset = frozenset()


NOTHING = Forwarding(STANDBY)
EVERYTHING = Forwarding(STANDBY, 1, frozenset({0}))


def forwards(key: bytes, fwd: Forwarding) -> bool | None:
    """Whether this member forwards the flow of a conntrack key
    (digest.record_key); None in ORIGIN mode, where nobody knows and the
    caller falls back to the origin rule (ours unless an up peer's view
    holds it)."""
    mode = fwd.mode
    if mode == STANDBY:
        return bool(fwd.owned)
    if mode == ORIGIN:
        return None
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


def from_roles(roles: Mapping[int, str], bucket_vhids: Mapping[int, int],
               buckets: int) -> Forwarding:
    """The value carpd's role events make: roles is vhid -> CARP state as
    published, bucket_vhids vhid -> bucket of each bucket election
    (active-active; empty in active-standby). No roles yet: ORIGIN."""
    if not roles:
        return Forwarding()
    if bucket_vhids:
        return Forwarding(BALANCED, buckets, frozenset(
            b for vhid, b in bucket_vhids.items() if roles.get(vhid) == MASTER))
    return EVERYTHING if MASTER in roles.values() else NOTHING
