"""A small DHCPv4 client for the lab: DISCOVER/REQUEST, RENEW and a forced
REBIND, each one exchange with explicit timeouts (test tooling, not product).

dhclient cannot be told to rebind now; this client sends exactly the
message a test asks for, from a UDP socket on port 68 living in the
client's namespace, bound to its interface:

  obtain()      DISCOVER, OFFER, REQUEST, ACK (broadcast flag set)
  renew(lease)  REQUEST with ciaddr, unicast to the lease's server identifier
  rebind(lease) REQUEST with ciaddr, broadcast, no server identifier

Replies to a REQUEST with ciaddr come unicast to ciaddr, so the leased
address must be on the interface (configure() puts it there, as a real
client does). Several clients with their own chaddr share one namespace.
"""
from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE = 1, 2, 3, 4, 5, 6, 7
OPT_REQUESTED, OPT_LEASE, OPT_TYPE, OPT_SERVER_ID, OPT_PARAMS = 50, 51, 53, 54, 55
OPT_ROUTER, OPT_DNS, OPT_END = 3, 6, 255
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


@dataclass(frozen=True)
class Lease:
    ip: str
    server_id: str
    lease_time: int
    router: str | None
    dns: tuple
    at: float  # time.monotonic() of the ACK


def _options(raw: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i < len(raw):
        code = raw[i]
        if code == OPT_END:
            break
        if code == 0:
            i += 1
            continue
        length = raw[i + 1]
        out[code] = raw[i + 2:i + 2 + length]
        i += 2 + length
    return out


def _ips(data: bytes) -> tuple:
    return tuple(socket.inet_ntoa(data[i:i + 4]) for i in range(0, len(data) - 3, 4))


def receive(sock, timeout: float, match):
    """Datagrams from sock until match(data) returns something (that is
    returned) or timeout seconds pass (None): the other clients' replies
    on a shared link are skipped."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(4096)
        except socket.timeout:
            return None
        found = match(data)
        if found is not None:
            return found
    return None


class DhcpClient:
    def __init__(self, lab, mac: str, role: str = "client", ifname: str = "eth0"):
        self.lab, self.role, self.ifname = lab, role, ifname
        self.mac = bytes.fromhex(mac.replace(":", ""))
        self.start = time.monotonic()

    # --- packets ---------------------------------------------------------------
    def _packet(self, kind: int, xid: int, ciaddr: str = "0.0.0.0", broadcast: bool = True,
                options: tuple = ()) -> bytes:
        secs = min(int(time.monotonic() - self.start), 0xFFFF)
        head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, secs,
                           0x8000 if broadcast else 0, socket.inet_aton(ciaddr), bytes(4),
                           bytes(4), bytes(4), self.mac.ljust(16, b"\0"), b"", b"")
        opts = bytes([OPT_TYPE, 1, kind])
        for code, value in options:
            opts += bytes([code, len(value)]) + value
        opts += bytes([OPT_PARAMS, 3, OPT_ROUTER, OPT_DNS, OPT_LEASE, OPT_END])
        return head + MAGIC + opts

    def _exchange(self, pkt: bytes, dest: str, xid: int, want: tuple, timeout: float):
        """Send pkt to dest:67 and wait for a reply of a kind in `want` for
        this xid and chaddr; (kind, yiaddr, options) or None on timeout."""
        sock = self.lab.socket(self.role, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.ifname.encode())
            sock.bind(("0.0.0.0", 68))
            sock.sendto(pkt, (dest, 67))
            return receive(sock, timeout, lambda data: self._match(data, xid, want))
        finally:
            sock.close()

    def _match(self, data: bytes, xid: int, want: tuple):
        if len(data) < 240 or data[236:240] != MAGIC:
            return None
        rxid = struct.unpack("!I", data[4:8])[0]
        if data[0] != 2 or rxid != xid or data[28:34] != self.mac:
            return None
        opts = _options(data[240:])
        kind = opts.get(OPT_TYPE, b"\0")[0]
        return (kind, socket.inet_ntoa(data[16:20]), opts) if kind in want else None

    def _lease(self, yiaddr: str, opts: dict) -> Lease:
        return Lease(ip=yiaddr, server_id=socket.inet_ntoa(opts[OPT_SERVER_ID]),
                     lease_time=struct.unpack("!I", opts[OPT_LEASE])[0],
                     router=(_ips(opts[OPT_ROUTER]) or (None,))[0] if OPT_ROUTER in opts else None,
                     dns=_ips(opts.get(OPT_DNS, b"")), at=time.monotonic())

    # --- exchanges ----------------------------------------------------------------
    def obtain(self, timeout: float = 2.0) -> Lease | None:
        self.start = time.monotonic()
        xid = struct.unpack("!I", os.urandom(4))[0]
        offer = self._exchange(self._packet(DISCOVER, xid), "255.255.255.255", xid, (OFFER,), timeout)
        if offer is None:
            return None
        _, yiaddr, opts = offer
        req = self._packet(REQUEST, xid, options=((OPT_REQUESTED, socket.inet_aton(yiaddr)),
                                                  (OPT_SERVER_ID, opts[OPT_SERVER_ID])))
        ack = self._exchange(req, "255.255.255.255", xid, (ACK, NAK), timeout)
        if ack is None or ack[0] != ACK:
            return None
        return self._lease(ack[1], ack[2])

    def renew(self, lease: Lease, timeout: float = 1.0) -> Lease | None:
        """RENEWING (RFC 2131 4.3.2): unicast to the server identifier."""
        return self._request(lease, lease.server_id, timeout)

    def rebind(self, lease: Lease, timeout: float = 1.0) -> Lease | None:
        """REBINDING: the same request broadcast, to any server."""
        return self._request(lease, "255.255.255.255", timeout)

    def _request(self, lease: Lease, dest: str, timeout: float) -> Lease | None:
        xid = struct.unpack("!I", os.urandom(4))[0]
        reply = self._exchange(self._packet(REQUEST, xid, ciaddr=lease.ip, broadcast=False),
                               dest, xid, (ACK, NAK), timeout)
        if reply is None or reply[0] != ACK:
            return None
        return self._lease(reply[1], reply[2])

    def configure(self, lease: Lease, prefixlen: int = 24) -> None:
        """Put the leased address on the interface (replies to ciaddr need it)."""
        self.lab.run(self.role, ["ip", "addr", "replace", f"{lease.ip}/{prefixlen}", "dev", self.ifname])
