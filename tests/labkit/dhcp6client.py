"""A small DHCPv6 client for the lab (RFC 8415): SOLICIT/REQUEST, RENEW and
a forced REBIND for one address (IA_NA), each one exchange with explicit
timeouts (test tooling, not product).

dhclient -6 cannot be told to rebind now; this client sends exactly the
message a test asks for, from a UDP socket on port 546 in the client's
namespace, bound to its interface, to All_DHCP_Relay_Agents_and_Servers
(ff02::1:2), where every DHCPv6 message of a client goes:

  obtain()      SOLICIT, ADVERTISE, REQUEST (to the advertising server), REPLY
  renew(lease)  RENEW naming the lease's server: only that server answers
  rebind(lease) REBIND, no server named: any server may answer

Replies come to the client's link-local address, so the leased address
need not be on the interface. Several clients (their own DUID) share one
namespace.
"""
from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

from tests.labkit.dhcpclient import receive

SOLICIT, ADVERTISE, REQUEST, RENEW, REBIND, REPLY = 1, 2, 3, 5, 6, 7
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR, OPT_ORO = 1, 2, 3, 5, 6
OPT_ELAPSED, OPT_STATUS, OPT_DNS = 8, 13, 23
ALL_SERVERS = "ff02::1:2"
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IAID = 1


@dataclass(frozen=True)
class Lease6:
    ip: str
    server_id: bytes  # the server's DUID
    t1: int
    t2: int
    preferred: int
    valid: int
    dns: tuple
    at: float  # time.monotonic() of the REPLY


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def _options(raw: bytes) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    i = 0
    while i + 4 <= len(raw):
        code, length = struct.unpack("!HH", raw[i:i + 4])
        out.setdefault(code, []).append(raw[i + 4:i + 4 + length])
        i += 4 + length
    return out


def _status_ok(opts: dict) -> bool:
    """No status code, or Success (0)."""
    return all(struct.unpack("!H", s[:2])[0] == 0 for s in opts.get(OPT_STATUS, []) if len(s) >= 2)


class Dhcp6Client:
    def __init__(self, lab, mac: str, role: str = "client", ifname: str = "eth0"):
        self.lab, self.role, self.ifname = lab, role, ifname
        # DUID-LL (type 3, hardware type 1) from the client's MAC
        self.duid = struct.pack("!HH", 3, 1) + bytes.fromhex(mac.replace(":", ""))
        self.start = time.monotonic()
        self.index: int | None = None

    def _message(self, kind: int, xid: int, ia: bytes, server_id: bytes | None) -> bytes:
        elapsed = min(int((time.monotonic() - self.start) * 100), 0xFFFF)
        body = _opt(OPT_CLIENTID, self.duid) + _opt(OPT_ELAPSED, struct.pack("!H", elapsed))
        if server_id is not None:
            body += _opt(OPT_SERVERID, server_id)
        body += _opt(OPT_ORO, struct.pack("!H", OPT_DNS)) + _opt(OPT_IA_NA, ia)
        return struct.pack("!I", (kind << 24) | xid) + body

    @staticmethod
    def _ia(lease: Lease6 | None) -> bytes:
        if lease is None:
            return struct.pack("!III", IAID, 0, 0)
        addr = _opt(OPT_IAADDR, socket.inet_pton(socket.AF_INET6, lease.ip) + struct.pack("!II", 0, 0))
        return struct.pack("!III", IAID, 0, 0) + addr

    def _exchange(self, msg: bytes, xid: int, want: int, timeout: float):
        """Send msg to ff02::1:2 port 547 on the interface and wait for a
        reply of kind `want` for this xid and DUID: its options, or None."""
        sock = self.lab.socket(self.role, socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.ifname.encode())
            sock.bind(("::", 546))
            sock.sendto(msg, (ALL_SERVERS, 547, 0, self._ifindex()))
            return receive(sock, timeout, lambda data: self._match(data, xid, want))
        finally:
            sock.close()

    def _match(self, data: bytes, xid: int, want: int) -> dict | None:
        if len(data) < 4:
            return None
        head = struct.unpack("!I", data[:4])[0]
        if head >> 24 != want or head & 0xFFFFFF != xid:
            return None
        opts = _options(data[4:])
        return opts if opts.get(OPT_CLIENTID, [b""])[0] == self.duid else None

    def _ifindex(self) -> int:
        # the index in the client's namespace (the scope of ff02::1:2)
        if self.index is None:
            out = self.lab.run(self.role, ["cat", f"/sys/class/net/{self.ifname}/ifindex"])
            self.index = int(out.stdout.strip())
        return self.index

    def _lease(self, opts: dict) -> Lease6 | None:
        """The address of the reply's IA_NA (None when the server refused it)."""
        if not _status_ok(opts) or OPT_IA_NA not in opts or OPT_SERVERID not in opts:
            return None
        ia = opts[OPT_IA_NA][0]
        _, t1, t2 = struct.unpack("!III", ia[:12])
        inner = _options(ia[12:])
        if not _status_ok(inner) or OPT_IAADDR not in inner:
            return None
        a = inner[OPT_IAADDR][0]
        preferred, valid = struct.unpack("!II", a[16:24])
        if valid == 0:
            return None
        dns = opts.get(OPT_DNS, [b""])[0]
        return Lease6(ip=socket.inet_ntop(socket.AF_INET6, a[:16]), server_id=opts[OPT_SERVERID][0],
                      t1=t1, t2=t2, preferred=preferred, valid=valid,
                      dns=tuple(socket.inet_ntop(socket.AF_INET6, dns[i:i + 16])
                                for i in range(0, len(dns) - 15, 16)),
                      at=time.monotonic())

    @staticmethod
    def _xid() -> int:
        return int.from_bytes(os.urandom(3), "big")

    def obtain(self, timeout: float = 2.0) -> Lease6 | None:
        self.start = time.monotonic()
        xid = self._xid()
        adv = self._exchange(self._message(SOLICIT, xid, self._ia(None), None), xid, ADVERTISE, timeout)
        offered = adv and self._lease(adv)
        if not offered:
            return None
        xid = self._xid()
        reply = self._exchange(self._message(REQUEST, xid, self._ia(offered), offered.server_id),
                               xid, REPLY, timeout)
        return reply and self._lease(reply)

    def renew(self, lease: Lease6, timeout: float = 1.0) -> Lease6 | None:
        """RENEW (RFC 8415 18.2.4): names the lease's server, which alone answers."""
        xid = self._xid()
        reply = self._exchange(self._message(RENEW, xid, self._ia(lease), lease.server_id),
                               xid, REPLY, timeout)
        return reply and self._lease(reply)

    def rebind(self, lease: Lease6, timeout: float = 1.0) -> Lease6 | None:
        """REBIND (18.2.5): no server named, any server may extend the lease."""
        xid = self._xid()
        reply = self._exchange(self._message(REBIND, xid, self._ia(lease), None), xid, REPLY, timeout)
        return reply and self._lease(reply)
