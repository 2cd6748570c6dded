"""The kernel's conntrack table over ctnetlink (NETLINK_NETFILTER, pyroute2
constants, syncd.ctnl codec): event subscription, dump, insert/update/delete.

Two sockets: `events` joins the NEW/UPDATE/DESTROY multicast groups with a
large receive buffer; `req` carries our requests. Events caused by our own
requests carry our request socket's port id, which is how replicated entries
are told apart from local traffic (no echo back to the peers).
"""
from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections import OrderedDict

from pyroute2.netlink import NETLINK_NETFILTER
from pyroute2.netlink.nfnetlink import (NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_NEW,
                                        NFNLGRP_CONNTRACK_UPDATE)

from syncd import ctnl
from syncd.core import applyplan
from syncd.core.entry import Entry

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10            # acks without a copy of the request
EVENT_GROUPS = sum(1 << (g - 1) for g in (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE,
                                          NFNLGRP_CONNTRACK_DESTROY))
# 64 MiB holds several seconds of 10k events/s (~250 bytes each) while the
# daemon is busy with a bulk dump.
EVENT_RCVBUF = 64 << 20
REQ_BATCH = 256                 # requests per sendmsg, acks read in between
# recv(n) would allocate n bytes per call and shrink them (a 1 MiB buffer
# is an mmap, page faults and a munmap per event): receive into one buffer
# per socket instead and parse from it before the next read.
EVENT_BUF = 1 << 16             # one event is a few hundred bytes
REQ_BUF = 4 << 20               # a dump answer: many entries per read
KNOWN_MAX = 1 << 20
_COUNTED = frozenset(("created", "updated", "kept"))   # applyplan outcomes kept in stats
_OK = {k: applyplan.outcome(k, 0)[0] for k in ("create", "update", "add", "delete", "unlink")}


SO_ATTACH_FILTER = 26


def drop_own_events(sock: socket.socket, portid: int) -> None:
    """Classic BPF on the event socket: drop, in the kernel, events caused by
    our own requests (nlmsg_pid == our request socket's port id). A replica
    would otherwise wake up and read one datagram per entry it writes."""
    own = struct.unpack(">I", struct.pack("=I", portid))[0]   # BPF loads big endian
    prog = [(0x20, 0, 0, 12),        # ld  [12]            nlmsghdr.nlmsg_pid
            (0x15, 0, 1, own),       # jeq #own, drop, accept
            (0x06, 0, 0, 0),         # ret #0              drop
            (0x06, 0, 0, 0xFFFFFFFF)]  # ret #-1           accept
    buf = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in prog))
    fprog = struct.pack("=HxxxxxxQ", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Overrun(Exception):
    """The kernel dropped events (ENOBUFS): the peers need a full refresh."""


class ConntrackError(Exception):
    pass


def _netlink(rcvbuf: int) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    except PermissionError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return s


class Dumper:
    """A dump of the whole table read a few buffers at a time, so a daemon's
    loop goes on reading events between two reads (a blocking dump of 100k
    entries stalls it for half a second). It has a socket of its own: the
    request socket's answers are read up to the ack the apply waits for."""

    def __init__(self):
        self.sock = _netlink(8 << 20)
        self.sock.bind((0, 0))
        self.sock.setblocking(False)
        self._view = memoryview(bytearray(REQ_BUF))
        self.seq = 0
        self.running = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def start(self) -> None:
        """Ask for a dump; a running one is abandoned (its leftovers are
        skipped by sequence number)."""
        self.seq = self.seq % 0x7FFFFFFF + 1
        self.sock.send(ctnl.encode_dump(self.seq))
        self.running = True

    def read(self, limit: int) -> tuple[list[Entry], bool]:
        """(entries read now, done). Non-blocking; stops after `limit`
        entries (one buffer holds ~100). Raises ConntrackError."""
        out = []
        view, recv_into, parse_entry = self._view, self.sock.recv_into, ctnl.parse_entry
        while self.running and len(out) < limit:
            try:
                n = recv_into(view)
            except BlockingIOError:
                break
            except OSError as e:
                self.running = False
                raise ConntrackError(f"dump: {e}") from None
            buf = view[:n]
            for mtype, _flags, seq, _pid, off, end in ctnl.split(buf):
                if seq != self.seq:
                    continue
                if mtype == ctnl.NLMSG_DONE or mtype == ctnl.NLMSG_ERROR:
                    self.running = False
                    code = ctnl.error_code(buf, off) if mtype == ctnl.NLMSG_ERROR else 0
                    if code:
                        raise ConntrackError(f"dump: {errno.errorcode.get(-code, code)}")
                    break
                e = parse_entry(buf, off, end)
                if e is not None:
                    out.append(e)
        return out, not self.running


class Conntrack:
    def __init__(self, events: bool = True, rcvbuf: int = EVENT_RCVBUF):
        self.req = _netlink(8 << 20)
        self.req.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.req.bind((0, 0))
        self.req.settimeout(5)
        self.portid = self.req.getsockname()[0]
        self._req_buf = bytearray(REQ_BUF)
        self._req_view = memoryview(self._req_buf)
        self.seq = 0
        self.events = None
        if events:
            self.events = _netlink(rcvbuf)
            self.events.bind((0, EVENT_GROUPS))
            self.events.setblocking(False)
            drop_own_events(self.events, self.portid)
            self._ev_buf = bytearray(EVENT_BUF)
            self._ev_view = memoryview(self._ev_buf)
        # Keys we have put into the kernel, so an update is tried first for them.
        self.known: OrderedDict = OrderedDict()
        self.stats = {"created": 0, "updated": 0, "deleted": 0, "kept": 0, "failed": 0,
                      "own_events": 0}
        self.last_error = ""

    def close(self) -> None:
        for s in (self.req, self.events):
            if s is not None:
                s.close()

    def fileno(self) -> int:
        return self.events.fileno()

    # --- events ----------------------------------------------------------------------
    def read_events(self, limit: int = 20000) -> list[tuple[str, Entry]]:
        """Drain pending events (non-blocking) as (kind, Entry). Raises
        Overrun after ENOBUFS."""
        def parse(buf, off, end, kind):
            e = ctnl.parse_entry(buf, off, end)
            return None if e is None else (kind, e)
        return self._drain(limit, parse)

    def read_records(self, limit: int = 20000) -> list[bytes]:
        """Drain pending events (non-blocking) as wire records, packed
        straight from the buffer (the live path: no Entry per event). Raises
        Overrun after ENOBUFS."""
        return self._drain(limit, ctnl.event_record)

    def _drain(self, limit: int, convert) -> list:
        out = []
        recv_into, view, portid = self.events.recv_into, self._ev_view, self.portid
        split, event_kind = ctnl.split, ctnl.event_kind
        while len(out) < limit:
            try:
                n = recv_into(view)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    raise Overrun() from None
                raise
            buf = view[:n]
            for mtype, flags, _seq, pid, off, end in split(buf):
                kind = event_kind(mtype, flags)
                if kind is None:
                    continue
                if pid == portid:
                    self.stats["own_events"] += 1
                    continue
                item = convert(buf, off, end, kind)
                if item is not None:
                    out.append(item)
        return out

    def _recv(self):
        """One read of the request socket: a view of the shared buffer, valid
        until the next read."""
        return self._req_view[:self.req.recv_into(self._req_view)]

    # --- requests ----------------------------------------------------------------------
    def _next_seq(self) -> int:
        self.seq = self.seq % 0x7FFFFFFF + 1
        return self.seq

    def _exchange(self, encode):
        """Send one request (encode(seq) -> bytes) and yield the messages of
        its answer as (type, buf, off, end), up to and including the closing
        NLMSG_DONE or NLMSG_ERROR (blocking; other sequence numbers are
        leftovers of earlier requests). buf is valid until the next one."""
        seq = self._next_seq()
        self.req.send(encode(seq))
        while True:
            buf = self._recv()
            for mtype, _flags, mseq, _pid, off, end in ctnl.split(buf):
                if mseq != seq:
                    continue
                yield mtype, buf, off, end
                if mtype == ctnl.NLMSG_DONE or mtype == ctnl.NLMSG_ERROR:
                    return

    def request(self, encode) -> int:
        """One request answered by an ack (encode(seq) -> bytes): its errno,
        0 when done (blocking)."""
        for mtype, buf, off, _end in self._exchange(encode):
            if mtype == ctnl.NLMSG_ERROR:
                return -ctnl.error_code(buf, off)
        return 0

    def dump(self) -> list[Entry]:
        """The whole table, both families (blocking)."""
        out = []
        for mtype, buf, off, end in self._exchange(ctnl.encode_dump):
            if mtype == ctnl.NLMSG_ERROR:
                code = ctnl.error_code(buf, off)
                if code:
                    raise ConntrackError(f"dump: {errno.errorcode.get(-code, code)}")
            elif mtype != ctnl.NLMSG_DONE:
                e = ctnl.parse_entry(buf, off, end)
                if e is not None:
                    out.append(e)
        return out

    def get(self, e: Entry) -> Entry | None:
        found = None
        for mtype, buf, off, end in self._exchange(lambda seq: ctnl.encode_get(e, seq)):
            if mtype != ctnl.NLMSG_ERROR:     # the entry, then the ack (or an error alone)
                found = ctnl.parse_entry(buf, off, end)
        return found

    def count(self) -> int:
        """Entries in this namespace's table (IPCTNL_MSG_CT_GET_STATS: no dump;
        the answer is one message, without NLMSG_DONE)."""
        for mtype, buf, off, end in self._exchange(ctnl.encode_stats):
            if mtype == ctnl.NLMSG_ERROR:
                raise ConntrackError(f"stats: error {ctnl.error_code(buf, off)}")
            return ctnl.parse_stats_entries(buf, off, end)
        return 0

    def apply(self, records, replace: bool = False, keep_existing: bool = False) -> None:
        """Put peers' changes ((op, Entry), ...) into the kernel table.

        Requests are pipelined; a create that finds the entry becomes an
        update and an update that finds none becomes a create. With replace
        (bulk transfers) an existing entry is deleted and created afresh,
        the two requests back to back: its TCP window data may be stale
        (this member carried the flow before a peer did) and only a new entry
        lets the kernel pick the window up from the next packet. With
        keep_existing (a bulk arriving while this member carries the traffic)
        entries it already has are left alone: its own are newer than any
        copy. syncd.core.applyplan has the rules."""
        work = applyplan.plan(records, self.known, replace, keep_existing)
        for _ in range(3):
            if not work:
                return
            work = self._run(work)
        for kind, e in work:
            self._failed(kind, e, "gave up")

    def _failed(self, kind: str, e: Entry, why: str) -> None:
        self.stats["failed"] += 1
        self.last_error = f"{kind} {e.osrc}:{e.osport}->{e.odst}:{e.odport}/{e.proto}: {why}"

    def _remember(self, key) -> None:
        known = self.known
        known[key] = None
        known.move_to_end(key)
        if len(known) > KNOWN_MAX:
            known.popitem(last=False)

    _ENCODE = {"create": ctnl.encode_create, "add": ctnl.encode_create,
               "update": ctnl.encode_update, "delete": ctnl.encode_delete,
               "unlink": ctnl.encode_delete}

    def _run(self, work) -> list:
        retry = []
        encode = self._ENCODE
        for i in range(0, len(work), REQ_BATCH):
            pending = {}
            msgs = []
            for kind, e in applyplan.requests(work[i:i + REQ_BATCH]):
                seq = self._next_seq()
                pending[seq] = (kind, e)
                msgs.append(encode[kind](e, seq))
            # Only the last request asks for an ack; the others answer only
            # on error, and the kernel handles them in order.
            last = seq
            self.req.send(b"".join([ctnl.without_ack(m) for m in msgs[:-1]] + msgs[-1:]))
            done = False
            while not done:
                try:
                    buf = self._recv()     # not recv(1 MiB): an mmap per batch
                except socket.timeout:
                    for kind, e in pending.values():
                        self._failed(kind, e, "no answer from the kernel")
                    pending.clear()
                    break
                for mtype, _flags, seq, _pid, off, _end in ctnl.split(buf):
                    if mtype != ctnl.NLMSG_ERROR or seq not in pending:
                        continue
                    kind, e = pending.pop(seq)
                    self._outcome(kind, e, -ctnl.error_code(buf, off), retry)
                    done = done or seq == last
            self._succeeded(pending.values())   # no error reported: done
        return retry

    def _succeeded(self, items) -> None:
        """_outcome(kind, e, 0) of each item, without a call per item (the
        common case: nearly every request of a batch succeeds)."""
        known, stats = self.known, self.stats
        for kind, e in items:
            what = _OK[kind]
            if what in _COUNTED:
                key = e.key
                known[key] = None
                known.move_to_end(key)
                stats[what] += 1
            else:       # deleted or gone
                known.pop(e.key, None)
                if what == "deleted":
                    stats["deleted"] += 1
        while len(known) > KNOWN_MAX:
            known.popitem(last=False)

    def _outcome(self, kind: str, e: Entry, code: int, retry: list) -> None:
        what, again = applyplan.outcome(kind, code)
        if what in _COUNTED:
            self._remember(e.key)
            self.stats[what] += 1
        elif what == "deleted" or what == "gone":
            self.known.pop(e.key, None)
            if what == "deleted":
                self.stats["deleted"] += 1
        elif what == "failed":
            self._failed(kind, e, errno.errorcode.get(code, str(code)))
        if again:
            retry.append((again, e))

