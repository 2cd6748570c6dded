"""Conntrack expectations over ctnetlink (NFNL_SUBSYS_CTNETLINK_EXP): the
kernel's expectation events in, a peer's expectations out (syncd/core/
expect.py decides what is carried and what waits for its master).

pyroute2 has no message class for this subsystem; its attributes are
nested like a conntrack entry's tuples, so syncd.ctnl's tuple codec
serves. Requests go through the daemon's conntrack request socket
(Conntrack.request); `events` joins the EXP_NEW and EXP_DESTROY groups and
drops, in the kernel, the events of that socket's requests: a replica is
never told back to its origin.
"""
from __future__ import annotations

import errno
import logging
import socket
import struct

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink import (NFNL_SUBSYS_CTNETLINK_EXP, NFNLGRP_CONNTRACK_EXP_DESTROY,
                                        NFNLGRP_CONNTRACK_EXP_NEW)

from syncd import ctnl
from syncd.conntrack import Conntrack, _netlink, drop_own_events
from syncd.core import expect
from syncd.core.expect import OP_EXPECT, OP_UNEXPECT, Expectation

log = logging.getLogger("syncd")

# include/uapi/linux/netfilter/nfnetlink_conntrack.h
IPCTNL_MSG_EXP_NEW, IPCTNL_MSG_EXP_GET, IPCTNL_MSG_EXP_DELETE = 0, 1, 2
EXP_NEW = (NFNL_SUBSYS_CTNETLINK_EXP << 8) | IPCTNL_MSG_EXP_NEW
EXP_DELETE = (NFNL_SUBSYS_CTNETLINK_EXP << 8) | IPCTNL_MSG_EXP_DELETE
(CTA_EXPECT_MASTER, CTA_EXPECT_TUPLE, CTA_EXPECT_MASK, CTA_EXPECT_TIMEOUT, CTA_EXPECT_ID,
 CTA_EXPECT_HELP_NAME, CTA_EXPECT_ZONE, CTA_EXPECT_FLAGS, CTA_EXPECT_CLASS) = range(1, 10)
GROUPS = (1 << (NFNLGRP_CONNTRACK_EXP_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_EXP_DESTROY - 1))
_ALL_ONES = {4: "255.255.255.255", 6: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}
_FAM = {4: socket.AF_INET, 6: socket.AF_INET6}
_VER = {socket.AF_INET: 4, socket.AF_INET6: 6}
_BE32 = struct.Struct("!I")
_BE16 = struct.Struct("!H")
EVENTS_RCVBUF = 1 << 18     # a helper's expectations are few: about the kernel's default


# --- codec ------------------------------------------------------------------------
def parse(buf, off: int, end: int) -> Expectation | None:
    """The expectation of an EXP_NEW/EXP_DELETE payload (after nlmsghdr);
    None for what sync does not carry."""
    family = _VER.get(buf[off])
    if family is None:
        return None
    a = ctnl._attrs_of(buf, off + 4, end)
    if not all(k in a for k in (CTA_EXPECT_MASTER, CTA_EXPECT_TUPLE, CTA_EXPECT_MASK)):
        return None
    master = ctnl._parse_tuple(buf, a[CTA_EXPECT_MASTER], family)
    proto, src, dst, sport, dport = ctnl._parse_tuple(buf, a[CTA_EXPECT_TUPLE], family)
    _, mask_src, _, mask_sport, _ = ctnl._parse_tuple(buf, a[CTA_EXPECT_MASK], family)

    def be32(k):
        return _BE32.unpack_from(buf, a[k][0])[0] if k in a else 0
    zone = _BE16.unpack_from(buf, a[CTA_EXPECT_ZONE][0])[0] if CTA_EXPECT_ZONE in a else 0
    x = Expectation(family, proto, zone, master, src, dst, sport, dport, mask_src, mask_sport,
                    be32(CTA_EXPECT_CLASS), be32(CTA_EXPECT_FLAGS), be32(CTA_EXPECT_TIMEOUT),
                    ctnl.helper_name(buf, a.get(CTA_EXPECT_HELP_NAME)))
    return x if expect.carried(x) else None


def _expected(x: Expectation) -> bytes:
    zone = ctnl._nla(CTA_EXPECT_ZONE, _BE16.pack(x.zone)) if x.zone else b""
    return ctnl._tuple(CTA_EXPECT_TUPLE, x.family, x.proto, x.src, x.dst, x.sport, x.dport) + zone


def encode_create(x: Expectation, seq: int) -> bytes:
    """IPCTNL_MSG_EXP_NEW. The master (found by its tuple) gives the
    expectation its helper's timeout and limits. The helper's name goes
    along only with a class other than 0 (sip's audio and video), which the
    kernel takes only with it -- it also gives the expected connection that
    helper, which an ftp data connection must not have."""
    mp, ms, md, msp, mdp = x.master
    parts = [ctnl._tuple(CTA_EXPECT_MASTER, x.family, mp, ms, md, msp, mdp), _expected(x),
             ctnl._tuple(CTA_EXPECT_MASK, x.family, x.proto, x.mask_src, _ALL_ONES[x.family],
                         x.mask_sport, 0xFFFF),
             ctnl._nla(CTA_EXPECT_TIMEOUT, _BE32.pack(max(x.timeout, 1))),
             ctnl._nla(CTA_EXPECT_FLAGS, _BE32.pack(x.flags))]
    if x.klass and x.helper:
        parts += [ctnl._nla(CTA_EXPECT_HELP_NAME, x.helper.encode() + b"\0"),
                  ctnl._nla(CTA_EXPECT_CLASS, _BE32.pack(x.klass))]
    return ctnl._message(EXP_NEW, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq,
                         _FAM[x.family], b"".join(parts))


def encode_delete(x: Expectation, seq: int) -> bytes:
    """IPCTNL_MSG_EXP_DELETE of the one expectation (without a tuple the
    kernel would delete every expectation)."""
    return ctnl._message(EXP_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, _FAM[x.family], _expected(x))


# --- sockets ----------------------------------------------------------------------
class Expectations:
    def __init__(self, ct: Conntrack):
        self.ct = ct
        self.events = _netlink(EVENTS_RCVBUF)
        self.events.bind((0, GROUPS))
        self.events.setblocking(False)
        drop_own_events(self.events, ct.portid)
        self.announced = expect.Announced()
        self.waiting = expect.Waiting()
        self.counters = {"expectations_sent": 0, "expectations_created": 0,
                         "expectations_failed": 0}

    def fileno(self) -> int:
        return self.events.fileno()

    def close(self) -> None:
        self.events.close()

    def read_records(self, limit: int) -> list[bytes]:
        """Wire records (expect.py) of what the kernel made or ended here:
        every new expectation, the end of one we announced."""
        out = []
        for _ in range(limit):
            try:
                buf = self.events.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as e:    # ENOBUFS: lost ones fail at the peers, as before
                log.warning("expectation events: %s", e)
                break
            for mtype, _flags, _seq, _pid, off, end in ctnl.split(buf):
                x = parse(buf, off, end) if mtype in (EXP_NEW, EXP_DELETE) else None
                if x is None:
                    continue
                if mtype == EXP_NEW:
                    self.announced.new(x)
                    out.append(expect.encode_record(OP_EXPECT, x))
                elif self.announced.ended(x):
                    out.append(expect.encode_record(OP_UNEXPECT, x))
        self.counters["expectations_sent"] += len(out)
        return out

    def apply(self, records, now: float) -> None:
        """A peer's expectations ((op, Expectation), ...): created, or ended."""
        for op, x in records:
            if op == OP_UNEXPECT:
                self.waiting.forget(x)
                self._request(lambda seq: encode_delete(x, seq))
            else:
                self._create(x, now + self.waiting.wait)

    def retry(self, now: float) -> None:
        """Expectations that waited for their master: tried once more."""
        for x, until in self.waiting.due(now):
            self._create(x, until)

    def _create(self, x: Expectation, until: float) -> None:
        code = self._request(lambda seq: encode_create(x, seq))
        if code in (0, errno.EEXIST):
            self.counters["expectations_created"] += 1
        elif code == errno.ENOENT:          # its master is not here yet
            self.waiting.hold(x, until)
        else:
            self.counters["expectations_failed"] += 1
            log.debug("expectation %s: %s", x, errno.errorcode.get(code, code))

    def _request(self, encode) -> int:
        try:
            return self.ct.request(encode)
        except OSError as e:
            return e.errno or errno.EIO

    def status(self) -> dict:
        return {**self.counters, "expectations_dropped": self.waiting.dropped}
