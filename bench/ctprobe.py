"""The sync benchmark's two probes, kept apart from the code they measure:
an injector that puts entries into a conntrack table and a watcher that
timestamps their events on the other member.

Both talk raw ctnetlink. The injector's requests are encoded before the
clock starts and sent in batches of at most BATCH with one ack, so its own
cost per entry is the kernel's insert and little more: at the peak it is
the implementation under test that limits the rate, not the probe. The
watcher reads a few events per recv and stamps each read as it returns; it
decodes only what it matches on (original tuple and mark), not whole entries.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import time

from syncd import ctnl

BATCH = 256
NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33
NLMSG_ERROR = 2
NLM_F_CREATE = 0x400
_HDR = struct.Struct("=IHHII")          # nlmsghdr
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=i")
_NFGENMSG = 4
_NLA_TYPE = 0x3FFF                      # without NLA_F_NESTED / byte order bits
CTA_TUPLE_ORIG, CTA_MARK = 1, 8
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC = 1
CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 2, 3
GROUPS = 0b111                          # NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY


def _socket(rcvbuf: int = 8 << 20, groups: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    s.bind((0, groups))
    return s


class Injector:
    """Requests made beforehand (ctnl's encoders: the wire form of a change
    is the same for every implementation), sent as the schedule asks."""

    def __init__(self, phase: str, entries: list):
        encode = {"new": ctnl.encode_create, "update": ctnl.encode_update,
                  "destroy": ctnl.encode_delete}[phase]
        self.msgs = [ctnl.without_ack(encode(e, i + 1)) for i, e in enumerate(entries)]
        self.sock = _socket()
        self.buf = bytearray(1 << 20)
        self.failed = 0

    def send(self, lo: int, hi: int) -> None:
        """Requests lo..hi-1 in one sendmsg; the last one asks for an ack,
        which comes after every error of the batch (the kernel answers in
        order)."""
        msgs = self.msgs
        last = bytearray(msgs[hi - 1])
        struct.pack_into("=H", last, 6, struct.unpack_from("=H", last, 6)[0] | 0x4)   # NLM_F_ACK
        self.sock.send(b"".join(msgs[lo:hi - 1]) + last)
        view = memoryview(self.buf)
        while True:
            n = self.sock.recv_into(view)
            off = 0
            while off + _HDR.size <= n:
                length, mtype, _flags, seq, _pid = _HDR.unpack_from(view, off)
                if mtype == NLMSG_ERROR:
                    if _ERR.unpack_from(view, off + _HDR.size)[0]:
                        self.failed += 1
                    if seq == hi:
                        return
                off += (length + 3) & ~3


def run_injector(phase: str, entries: list, rate: float) -> dict:
    """Times each entry's request (the moment before its batch is sent);
    rate <= 0: as fast as the kernel takes them."""
    inj = Injector(phase, entries)
    count = len(entries)
    times = [0.0] * count
    cpu = time.process_time()
    start = time.monotonic()
    done = 0
    while done < count:
        now = time.monotonic()
        due = count if rate <= 0 else min(count, int((now - start) * rate) + 1)
        if due > done:
            hi = min(due, done + BATCH)
            t = time.monotonic()
            inj.send(done, hi)
            times[done:hi] = [t] * (hi - done)
            done = hi
        else:
            time.sleep(0.0005)
    return {"times": times, "failed": inj.failed, "seconds": time.monotonic() - start,
            "cpu_s": time.process_time() - cpu}


def _attrs(buf, off: int, end: int):
    while off + 4 <= end:
        length, atype = _NLA.unpack_from(buf, off)
        if length < 4:
            return
        yield atype & _NLA_TYPE, off + 4, off + length
        off += (length + 3) & ~3


def match_key(buf, off: int, end: int) -> tuple | None:
    """(kind, IPv4 source, source port, destination port, mark) of one
    conntrack event message at off (its nlmsghdr), or None."""
    length, mtype, flags, _seq, _pid = _HDR.unpack_from(buf, off)
    kind = ctnl.event_kind(mtype, flags)
    if kind is None:
        return None
    src = sport = dport = None
    mark = 0
    for atype, a, b in _attrs(buf, off + _HDR.size + _NFGENMSG, off + length):
        if atype == CTA_MARK:
            mark = struct.unpack_from(">I", buf, a)[0]
        elif atype == CTA_TUPLE_ORIG:
            for t, ta, tb in _attrs(buf, a, b):
                if t == CTA_TUPLE_IP:
                    for it, ia, ib in _attrs(buf, ta, tb):
                        if it == CTA_IP_V4_SRC and ib - ia == 4:
                            src = str(ipaddress.IPv4Address(bytes(buf[ia:ib])))
                elif t == CTA_TUPLE_PROTO:
                    for pt, pa, _pb in _attrs(buf, ta, tb):
                        if pt == CTA_PROTO_SRC_PORT:
                            sport = struct.unpack_from(">H", buf, pa)[0]
                        elif pt == CTA_PROTO_DST_PORT:
                            dport = struct.unpack_from(">H", buf, pa)[0]
    if src is None or sport is None or dport is None:
        return None
    return kind, src, sport, dport, mark


class Watcher:
    """Event socket of one member's table; read() returns the matched keys of
    what one recv brought, with the time it returned."""

    def __init__(self, rcvbuf: int = 64 << 20):
        self.sock = _socket(rcvbuf, GROUPS)
        self.sock.setblocking(False)
        self.view = memoryview(bytearray(8192))     # a few events per read: fine-grained stamps

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> tuple[float, list] | None:
        """None when nothing is pending; raises OSError(ENOBUFS) on overrun."""
        try:
            n = self.sock.recv_into(self.view)
        except BlockingIOError:
            return None
        now = time.monotonic()
        view, out, off = self.view, [], 0
        while off + _HDR.size <= n:
            length = _HDR.unpack_from(view, off)[0]
            if length < _HDR.size:
                break
            k = match_key(view, off, off + length)
            if k is not None:
                out.append(k)
            off += (length + 3) & ~3
        return now, out
