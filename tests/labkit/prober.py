"""ICMP echo probes from a namespace, with the send and receive time of
every reply on time.monotonic() (a clock all namespaces share)."""
from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Callable

from fwcluster.carp.core.wire import checksum

if TYPE_CHECKING:
    from tests.labkit.lab import Lab


class Prober:
    """ICMP echo requests from a namespace to one address every `interval`
    seconds, sent and received by a thread; stops by itself after `duration`
    seconds (or `count` requests). Each reply is kept as (seq, t_sent, t_recv)
    on time.monotonic(), a clock every namespace shares, so a caller can
    relate replies to the moment it caused a fault."""

    def __init__(self, lab: "Lab", role: str, target: str, interval: float = 0.005,
                 duration: float = 30.0, count: int | None = None,
                 on_reply: Callable[[int, float, float], None] | None = None):
        self.target = target
        self.v6 = ipaddress.ip_address(target).version == 6
        self.interval = interval
        self.duration = duration
        self.count = count if count is not None else int(duration / interval) + 1
        self.on_reply = on_reply
        fam, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if self.v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
        self.sock = lab.socket(role, fam, socket.SOCK_RAW, proto)
        self.ident = (os.getpid() ^ id(self)) & 0xFFFF
        self.sent: dict[int, float] = {}
        self.replies: list[tuple[int, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"probe-{target}", daemon=True)

    def start(self) -> "Prober":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> "Prober":
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return self

    def __enter__(self) -> "Prober":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _packet(self, seq: int) -> bytes:
        typ = 128 if self.v6 else 8
        payload = b"fwcluster-probe!"
        hdr = struct.pack("!BBHHH", typ, 0, 0, self.ident, seq & 0xFFFF)
        if self.v6:  # the kernel fills in the ICMPv6 checksum of raw sockets
            return hdr + payload
        csum = checksum(hdr + payload)  # ICMP uses the same RFC 1071 sum as CARP
        return struct.pack("!BBHHH", typ, 0, csum, self.ident, seq & 0xFFFF) + payload

    def _loop(self) -> None:
        dest = (self.target, 0)
        t0 = self.started
        end = t0 + self.duration
        seq = 0
        next_send = t0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_send and seq < self.count:
                try:
                    self.sock.sendto(self._packet(seq), dest)
                except OSError:
                    pass  # no route / no neighbour yet: a lost probe, like any other
                self.sent[seq & 0xFFFF] = now
                seq += 1
                next_send = t0 + seq * self.interval
                if next_send < now:  # fell behind (scheduling): do not burst
                    next_send = now + self.interval
            wait = max(0.0, min(next_send, end) - time.monotonic())
            if seq >= self.count:
                wait = max(0.0, min(end, self.sent.get((seq - 1) & 0xFFFF, now) + 1.0) - time.monotonic())
                if wait == 0:
                    break
            r, _, _ = select.select([self.sock], [], [], wait)
            if r:
                self._receive()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(2048, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            t = time.monotonic()
            if not self.v6:
                data = data[(data[0] & 0x0F) * 4:] if data else data
            if len(data) < 8:
                continue
            typ, _, _, ident, seq = struct.unpack("!BBHHH", data[:8])
            if typ != (129 if self.v6 else 0) or ident != self.ident or seq not in self.sent:
                continue
            sent = self.sent.pop(seq)
            self.replies.append((seq, sent, t))
            if self.on_reply:
                self.on_reply(seq, sent, t)

    # --- results -----------------------------------------------------------------
    def reply_times(self) -> list[float]:
        return sorted(t for _, _, t in self.replies)

    def gap_around(self, t: float) -> float | None:
        """Seconds from the last reply received before t to the first after
        it; None if there is none on one side."""
        times = self.reply_times()
        before = [x for x in times if x <= t]
        after = [x for x in times if x > t]
        if not before or not after:
            return None
        return after[0] - before[-1]
