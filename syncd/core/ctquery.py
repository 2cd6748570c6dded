"""fwctl conntrack show|count: a request's answer built from a dump a piece
at a time (pure; syncd/ctshow.py feeds it).

The filter is checked and compiled before the dump starts (a bad one is
refused at once, and each entry costs comparisons, not parsing), and the
answer keeps counts and at most `limit` described entries, whatever the
size of the table.
"""
from __future__ import annotations

import ipaddress

from syncd.core.entry import PROTO_NAMES, TCP_STATES, Entry

FILTERS = ("proto", "family", "src", "dst", "sport", "dport", "state")
DEFAULT_LIMIT = 1000
# Described entries kept for one reply (~0.4 kB of JSON each).
MAX_LIMIT = 10000


def _proto(want: str):
    def ok(e: Entry) -> bool:
        return PROTO_NAMES.get(e.proto, str(e.proto)) == want.lower() or str(e.proto) == want
    return ok


def _addresses(want, side):
    def ok(e: Entry) -> bool:
        for v in side(e):
            a = ipaddress.ip_address(v)
            if a.version == want.version and a in want:
                return True
        return False
    return ok


def compile_filter(flt: dict):
    """{name: value} -> a test of an Entry. Raises ValueError naming what is
    wrong. src matches the original source or a NATed reply's destination,
    dst the original destination or the reply's source."""
    if not isinstance(flt, dict):
        raise ValueError("filter must be an object")
    unknown = sorted(set(flt) - set(FILTERS))
    if unknown:
        raise ValueError(f"unknown filter {unknown[0]!r} (known: {', '.join(FILTERS)})")
    tests = []
    if "proto" in flt:
        tests.append(_proto(str(flt["proto"])))
    if "family" in flt:
        family = int(flt["family"])
        tests.append(lambda e: e.family == family)
    if "src" in flt:
        tests.append(_addresses(ipaddress.ip_network(flt["src"], strict=False),
                                lambda e: (e.osrc, e.rdst)))
    if "dst" in flt:
        tests.append(_addresses(ipaddress.ip_network(flt["dst"], strict=False),
                                lambda e: (e.odst, e.rsrc)))
    if "sport" in flt:
        sport = int(flt["sport"])
        tests.append(lambda e: e.osport == sport)
    if "dport" in flt:
        dport = int(flt["dport"])
        tests.append(lambda e: e.odport == dport)
    if "state" in flt:
        state = str(flt["state"]).upper()
        tests.append(lambda e: TCP_STATES.get(e.tcp_state, "") == state)
    return lambda e: all(t(e) for t in tests)


class Query:
    """One request: {"filter": {...}, "entries": bool, "limit": n}."""

    def __init__(self, req: dict):
        self.match = compile_filter(req.get("filter") or {})
        self.show = bool(req.get("entries", True))
        self.limit = int(req.get("limit", DEFAULT_LIMIT))
        if not 0 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit {self.limit}: from 0 to {MAX_LIMIT}")
        self.restart()

    def restart(self) -> None:
        """Forget what was added (the dump is read again)."""
        self.total = self.count = 0
        self.entries: list[dict] = []

    def add(self, entries: list[Entry]) -> None:
        """A piece of the dump."""
        self.total += len(entries)
        match, kept = self.match, self.entries
        for e in entries:
            if match(e):
                self.count += 1
                if self.show and len(kept) < self.limit:
                    kept.append(e.describe())

    def reply(self) -> dict:
        out = {"ok": True, "total": self.total, "count": self.count}
        if self.show:
            out["entries"] = self.entries
        return out
