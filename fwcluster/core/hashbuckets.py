"""Active-active balancing: which member carries which flow (pure).

Every member receives every frame sent to a balanced vip (the vip resolves
to a multicast MAC, see vip_mac). Each flow falls into one of N buckets by
a hash of its conntrack original-direction addresses, and a member passes
only the buckets it owns. Ownership is elected per bucket with CARP: one
vhid per bucket, with the advskews rotated so that each member is the
preferred owner of an equal share and, when one member is lost, its share
is split evenly among the survivors.

Nothing here touches the kernel: carpd asks this module what to run and
what it owns; fwcluster.nft puts the owned set into nftables.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

# Seed of the flow hash. It must be the same on every member (they must all
# agree on a flow's bucket); any constant works, this one is just not 0.
HASH_SEED = 0xFC1A5EED

# Steps between the advskews of a bucket's preferred, second, third, ...
# member, when the configured member skews cannot be used as they are.
SKEW_STEP = 50

MASTER = "MASTER"


# --- the flow hash ---------------------------------------------------------------
# The bucket of a flow is what nftables computes with
#     jhash ct original ip saddr . ct original ip daddr mod N seed HASH_SEED
# (ip6 likewise). Keying on the *original* tuple of the conntrack entry makes
# the two directions of a flow agree, with or without NAT: a reply, even one
# addressed to a masquerade address, finds the same entry and so the same
# tuple. The kernel's symhash is symmetric too, but hashes the packet's own
# headers, so a NATed reply would land in a different bucket.
#
# flow_bucket() models the kernel's computation bit for bit (Jenkins'
# lookup3 "jhash" as in include/linux/jhash.h, then nft_jhash's
# reciprocal_scale), so tests and fwctl can say which member owns a flow.

_M32 = 0xFFFFFFFF
_JHASH_INITVAL = 0xDEADBEEF


def _rol(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    for (x, y, z), r in zip(((0, 2, 1), (1, 0, 2), (2, 1, 0)) * 2, (4, 6, 8, 16, 19, 4)):
        # Each round: v[x] -= v[y]; v[x] ^= rol(v[y], r); v[y] += v[z]
        v = [a, b, c]
        v[x] = (v[x] - v[y]) & _M32
        v[x] ^= _rol(v[y], r)
        v[y] = (v[y] + v[z]) & _M32
        a, b, c = v
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int, int]:
    v = [a, b, c]
    # (target, source, rotation): v[t] ^= v[s]; v[t] -= rol(v[s], r)
    for t, s, r in ((2, 1, 14), (0, 2, 11), (1, 0, 25), (2, 1, 16),
                    (0, 2, 4), (1, 0, 14), (2, 1, 24)):
        v[t] ^= v[s]
        v[t] = (v[t] - _rol(v[s], r)) & _M32
    return v[0], v[1], v[2]


def jhash(key: bytes, seed: int) -> int:
    """The kernel's jhash() of key (little-endian word loads, as on x86/arm64)."""
    length = len(key)
    a = b = c = (_JHASH_INITVAL + length + seed) & _M32
    k = key
    while len(k) > 12:
        a = (a + int.from_bytes(k[0:4], "little")) & _M32
        b = (b + int.from_bytes(k[4:8], "little")) & _M32
        c = (c + int.from_bytes(k[8:12], "little")) & _M32
        a, b, c = _mix(a, b, c)
        k = k[12:]
    if not k:
        return c
    tail = k.ljust(12, b"\0")
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    c = (c + int.from_bytes(tail[8:12], "little")) & _M32
    return _final(a, b, c)[2]


def flow_bucket(orig_src: str, orig_dst: str, buckets: int, seed: int = HASH_SEED) -> int:
    """Bucket of a flow from its original-direction addresses (both one family)."""
    src, dst = ipaddress.ip_address(orig_src), ipaddress.ip_address(orig_dst)
    if src.version != dst.version:
        raise ValueError(f"{orig_src} and {orig_dst} are not of one address family")
    h = jhash(src.packed + dst.packed, seed)
    return (h * buckets) >> 32  # reciprocal_scale(h, buckets)


# --- frames to every member --------------------------------------------------------

def vip_mac(vhid: int) -> str:
    """Multicast MAC a balanced vip resolves to, as OpenBSD CARP's balancing
    "ip" mode uses: a switch floods it to every member's port."""
    if not 1 <= vhid <= 255:
        raise ValueError(f"vhid {vhid} is outside 1-255")
    return f"01:00:5e:00:01:{vhid:02x}"


# --- buckets and their CARP elections -----------------------------------------------

def bucket_vhids(buckets: int, vip_vhids: Iterable[int]) -> tuple[int, ...]:
    """vhid of each bucket: counting down from 255, skipping vhids the vips use
    (vips are usually numbered from 1, so the two rarely meet)."""
    used = set(vip_vhids)
    free = [v for v in range(255, 0, -1) if v not in used]
    if buckets > len(free):
        raise ValueError(f"{buckets} buckets need {buckets} free vhids; only {len(free)} are left")
    return tuple(free[:buckets])


def preference(bucket: int, n_members: int) -> tuple[int, ...]:
    """Member indexes in the order they should own `bucket`.

    The first choice rotates through the members (bucket b goes to member
    b mod n); the order of the others rotates with b // n, so the buckets a
    lost member owned are spread over the survivors instead of all falling
    to its neighbour.
    """
    if n_members < 1:
        raise ValueError("need at least one member")
    first = bucket % n_members
    others = [(first + 1 + i) % n_members for i in range(n_members - 1)]
    if others:
        turn = (bucket // n_members) % len(others)
        others = others[turn:] + others[:turn]
    return (first, *others)


def skew_ladder(member_skews: Sequence[int], advbase: int) -> tuple[int, ...]:
    """advskew of the 1st, 2nd, ... choice of every bucket.

    The members' configured skews, sorted, when they are all different (they
    were chosen for this advbase: with advbase 0 they set the advert
    interval); otherwise evenly stepped ones starting at the smallest.
    """
    n = len(member_skews)
    ladder = sorted(member_skews)
    if len(set(ladder)) == n:
        return tuple(ladder)
    low = ladder[0] if advbase else max(ladder[0], 1)
    step = SKEW_STEP if advbase else low
    if n > 1:
        step = max(1, min(step, (254 - low) // (n - 1)))
    return tuple(low + r * step for r in range(n))


@dataclass(frozen=True)
class BucketElection:
    """One bucket's CARP instance as one member runs it."""
    bucket: int
    vhid: int
    advbase: int
    advskew: int
    preferred: str  # member that owns the bucket while everybody is up


def elections(buckets: int, members: Sequence[str], member_skews: Sequence[int],
              vip_vhids: Iterable[int], advbase: int, node: str) -> tuple[BucketElection, ...]:
    """The per-bucket CARP instances `node` runs (empty for 0 buckets)."""
    if node not in members:
        raise ValueError(f"{node!r} is not a member")
    me = list(members).index(node)
    ladder = skew_ladder(member_skews, advbase)
    out = []
    for b, vhid in enumerate(bucket_vhids(buckets, vip_vhids)):
        order = preference(b, len(members))
        out.append(BucketElection(b, vhid, advbase, ladder[order.index(me)], members[order[0]]))
    return tuple(out)


def elections_for(cfg, node: str) -> tuple[BucketElection, ...]:
    """elections() from a fwcluster.config.Config; empty unless active-active.
    Bucket adverts use the advbase of the first vip (all vips share timing)."""
    if cfg.balance.mode != "active-active":
        return ()
    return elections(cfg.balance.buckets, [m.name for m in cfg.members],
                     [m.advskew for m in cfg.members], [v.vhid for v in cfg.vips],
                     cfg.vips[0].advbase, node)


def owned_buckets(states: Mapping[int, str], plan: Iterable[BucketElection]) -> frozenset[int]:
    """Buckets whose vhid this member is MASTER of. states: vhid -> CARP state."""
    return frozenset(e.bucket for e in plan if states.get(e.vhid) == MASTER)


def owners(buckets: int, members: Sequence[str], alive: Iterable[str] | None = None) -> dict[int, str]:
    """Expected owner of every bucket once elections settle with `alive`
    members up (all by default): the first alive member in its preference."""
    up = set(members if alive is None else alive)
    out = {}
    for b in range(buckets):
        for i in preference(b, len(members)):
            if members[i] in up:
                out[b] = members[i]
                break
    return out


def spread(owner_of: Mapping[int, str], members: Sequence[str]) -> dict[str, int]:
    """Number of buckets each member owns (members owning none included)."""
    count = {m: 0 for m in members}
    for m in owner_of.values():
        count[m] = count.get(m, 0) + 1
    return count
